from __future__ import annotations

import uuid

from sqlalchemy import Connection, delete, event, func, select

from overnight_pipeline.storage.keysets import keys_in
from overnight_pipeline.storage.models import assets_table

A = assets_table


def _assets(conn: Connection, n: int) -> list[tuple[str, str]]:
    keys = [("NYSE", f"K{i:05d}") for i in range(n)]
    conn.execute(
        A.insert(),
        [{"id": uuid.uuid4(), "market": m, "symbol": s, "currency": "USD"} for m, s in keys],
    )
    return keys


def _found(conn: Connection, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for wanted in keys_in(conn, [A.c.market, A.c.symbol], keys, chunk=7):
        found.extend((m, s) for m, s in conn.execute(select(A.c.market, A.c.symbol).where(wanted)))
    return sorted(found)


def test_keys_select_their_rows_once_each(db_conn: Connection) -> None:
    keys = _assets(db_conn, 20)
    asked = [*keys[:10], *keys[:3], ("NYSE", "ABSENT"), ("B3", keys[0][1])]
    assert _found(db_conn, asked) == sorted(keys[:10])
    assert list(keys_in(db_conn, [A.c.market, A.c.symbol], [])) == []
    ids = db_conn.execute(select(A.c.id).where(A.c.symbol < "K00004")).scalars().all()
    for gone in keys_in(db_conn, [A.c.id], [(i,) for i in ids]):
        db_conn.execute(delete(A).where(gone))
    assert db_conn.execute(select(func.count()).select_from(A)).scalar() == 16


def test_postgresql_sends_one_statement_with_one_array_per_column(pg_conn: Connection) -> None:
    keys = _assets(pg_conn, 3000)
    sent: list[tuple[str, dict[str, object]]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        sent.append((statement, parameters))

    event.listen(pg_conn, "before_cursor_execute", record)
    try:
        assert _found(pg_conn, keys[:3]) == keys[:3]
        assert _found(pg_conn, keys) == keys
    finally:
        event.remove(pg_conn, "before_cursor_execute", record)
    (few, few_parameters), (many, many_parameters) = sent
    assert few == many  # the same text, so the same plan shape, for 3 keys and 3,000
    assert len(few_parameters) == len(many_parameters) == 2
    assert "unnest" in few
