"""A load that removes many holdings finishes in seconds under PostgreSQL's default settings
(issue 23: a row-value IN list of 5,000 pairs was JIT-compiled for more than 8 minutes)."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, event, func, select, text

from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.storage.bulk import copy_rows
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    holdings_table,
    users_table,
)

USERS = 200  # in the file: each holds ASSETS assets, then keeps KEPT of them
ASSETS = 55
KEPT = 5
REMOVED = USERS * (ASSETS - KEPT)  # 10,000
OTHERS = 600  # users the file leaves alone: the rest of the holdings table (33,000 rows)


def seed_holdings(conn: Connection) -> tuple[list[uuid.UUID], list[uuid.UUID], list[str]]:
    """The state before the file, written set-wise (a 10,000-holding file would cost its
    parse, which is not what is tested)."""
    symbols = [f"S{i:03d}" for i in range(ASSETS)]
    assets = [uuid.uuid4() for _ in symbols]
    conn.execute(
        assets_table.insert(),
        [
            {"id": i, "market": "NYSE", "symbol": s, "currency": "USD"}
            for i, s in zip(assets, symbols, strict=True)
        ],
    )
    users = [uuid.uuid4() for _ in range(USERS + OTHERS)]
    classes = {u: uuid.uuid4() for u in users}
    conn.execute(
        users_table.insert(),
        [
            {"id": u, "base_currency": "USD", "default_contribution": Decimal(1000), "active": True}
            for u in users
        ],
    )
    conn.execute(
        asset_classes_table.insert(),
        [
            {
                "id": classes[u],
                "user_id": u,
                "name": "Stocks",
                "position": 0,
                "target_min": Decimal(0),
                "target_max": Decimal(100),
            }
            for u in users
        ],
    )
    copy_rows(
        conn,
        holdings_table,
        ["user_id", "asset_id", "asset_class_id", "quantity"],
        ((u, a, classes[u], Decimal(3)) for u in users for a in assets),
    )
    return users, assets, symbols


def selling_file(users: list[uuid.UUID], symbols: list[str]) -> dict[str, Any]:
    """Each of `users` keeps the first KEPT assets (one with a new quantity): the rest are sold."""
    return {
        "assets": [],
        "users": [
            {
                "id": str(u),
                "baseCurrency": "USD",
                "defaultContribution": "1000.00",
                "assetClasses": [{"name": "Stocks", "targetMin": "0", "targetMax": "100"}],
                "holdings": [
                    {
                        "market": "NYSE",
                        "symbol": s,
                        "quantity": "4" if k == 0 else "3",
                        "assetClass": "Stocks",
                    }
                    for k, s in enumerate(symbols[:KEPT])
                ],
            }
            for u in users
        ],
    }


def _holdings(conn: Connection, users: list[uuid.UUID]) -> set[tuple[uuid.UUID, uuid.UUID]]:
    t = holdings_table
    rows = conn.execute(select(t.c.user_id, t.c.asset_id).where(t.c.user_id.in_(users)))
    return {(u, a) for u, a in rows}


def test_a_load_removing_10000_holdings_finishes_in_seconds(db_conn: Connection) -> None:
    users, assets, symbols = seed_holdings(db_conn)
    sellers, others = users[:USERS], users[USERS:]
    postgres = db_conn.dialect.name == "postgresql"
    if postgres:
        # A regression fails instead of hanging (LLVM compilation is not cancellable: the
        # timeout fires once it ends). JIT stays at the server's defaults.
        db_conn.execute(text("SET LOCAL statement_timeout = '30s'"))
        # The statistics autovacuum keeps after a bulk write; with none, the planner
        # underestimates the table and the slow plan does not show.
        db_conn.execute(text("ANALYZE holdings, assets, asset_classes, users"))
    doc = parse_load_file(selling_file(sellers, symbols), markets=load_markets())

    executed: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        # An executemany (the upserts) is one statement per row, planned alike.
        executed.append((statement, parameters[0] if executemany else parameters))

    event.listen(db_conn, "before_cursor_execute", record)
    started = time.perf_counter()
    try:
        report = load(db_conn, doc)
    finally:
        event.remove(db_conn, "before_cursor_execute", record)
    seconds = time.perf_counter() - started

    assert report.holdings == USERS * KEPT
    kept = {(u, a) for u in sellers for a in assets[:KEPT]}
    assert _holdings(db_conn, sellers) == kept
    assert len(_holdings(db_conn, others)) == OTHERS * ASSETS
    q = holdings_table.c.quantity
    assert db_conn.execute(select(func.count()).where(q == Decimal(4))).scalar() == USERS
    # About 0.3 s on PostgreSQL (10.5 s before issue 23) and on SQLite.
    assert seconds < 5, f"the load took {seconds:.1f} s"

    if postgres:
        # Every statement the load ran is planned below the cost where the server's
        # defaults JIT-compile (the old 5,000-pair DELETE: 154,000 here, 518,730 in the
        # issue), so no plan depends on how many holdings the file removes.
        jit_above = float(
            db_conn.execute(text("SELECT current_setting('jit_above_cost')")).scalar_one()
        )
        assert any(s.startswith("DELETE FROM holdings") for s, _ in executed)
        for statement, parameters in executed:
            plan = db_conn.exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + statement, parameters
            ).scalar_one()[0]
            assert "JIT" not in plan, statement
            assert plan["Plan"]["Total Cost"] < jit_above, (plan["Plan"]["Total Cost"], statement)
