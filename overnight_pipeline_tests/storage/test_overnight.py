"""The pipeline's batch reads and COPY writes (`storage.overnight`)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Connection, Engine, select

from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.seed import seed
from overnight_pipeline.storage.batches import (
    LoadedBatch,
    MarketSnapshot,
    ensure_statistics,
    load_batch,
    load_market_snapshot,
    partition_instruments,
    partition_users,
)
from overnight_pipeline.storage.bulk import write_rows
from overnight_pipeline.storage.events import event_payloads, event_rows, insert_snapshot, snapshots
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import (
    asset_scores_table,
    calculation_assets_table,
    calculation_events_table,
)
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.results import (
    ScoreRow,
    asset_score_rows,
    calculation_asset_rows,
    replace_scores,
)
from overnight_pipeline_tests.support.stored_results import insert_asset, insert_users

DAY = date(2026, 11, 27)
ODD_USER = uuid.UUID("00000000-0000-4000-8000-0000000000dd")


# The writes below are what the pipeline's steps do with `event_rows`, `replace_scores`,
# `asset_score_rows` and `calculation_asset_rows`, one table at a time.


def _append_events(
    conn: Connection, events: Sequence[tuple[uuid.UUID, Any, str, Any]], *, at: datetime
) -> None:
    ensure_months(conn, [at])
    write_rows(conn, event_rows(conn.dialect.name, events, at=at, calculated_at=at))


def _replace_scores(
    conn: Connection,
    rows: Sequence[ScoreRow],
    *,
    user_ids: Sequence[uuid.UUID],
    day: date,
    correlation_id: uuid.UUID,
    computed_at: datetime,
) -> None:
    replace_scores(
        conn,
        asset_score_rows(
            conn.dialect.name, rows, day=day, correlation_id=correlation_id, computed_at=computed_at
        ),
        user_ids=user_ids,
        day=day,
    )


def _add_calculation_assets(
    conn: Connection,
    rows: Sequence[tuple[str, str, str]],
    *,
    correlation_id: uuid.UUID,
    calculated_at: datetime,
) -> None:
    ensure_months(conn, [calculated_at])
    write_rows(
        conn,
        calculation_asset_rows(
            conn.dialect.name, rows, correlation_id=correlation_id, calculated_at=calculated_at
        ),
    )


def _rows(frame: pd.DataFrame) -> list[tuple[str, ...]]:
    # repr: the same Decimal digits and exponent, not just equal values.
    return [tuple(map(repr, row)) for row in frame.itertuples()]


def _load_batch(conn: Connection) -> LoadedBatch:
    """Seeded users plus one with odd text and padded numerics, some assets priced (one in
    another currency), loaded as the pipeline loads a batch."""
    seed(conn, users=40, seed=3, as_of=DAY)
    load(
        conn,
        parse_load_file(
            {
                "assets": [{"market": "NYSE", "symbol": "ODD", "currency": "USD"}],
                "users": [
                    {
                        "id": str(ODD_USER),
                        "baseCurrency": "EUR",
                        "defaultContribution": None,
                        "assetClasses": [
                            {
                                "name": 'Tab\there \\ "q"',
                                "targetMin": "0.5000",
                                "targetMax": "100",
                                "maxAssets": None,
                                "minAllocationValue": "250.00",
                            }
                        ],
                        "holdings": [
                            {
                                "market": "NYSE",
                                "symbol": "ODD",
                                "quantity": "1.50",
                                "assetClass": 'Tab\there \\ "q"',
                            }
                        ],
                        "criteria": [
                            {
                                "id": "b",
                                "assetClass": 'Tab\there \\ "q"',
                                "metric": "pe_ratio",
                                "operator": "between",
                                "value": "1.10",
                                "value2": "20",
                                "points": 3,
                            }
                        ],
                    }
                ],
            },
            markets=load_markets(),
        ),
    )
    users = partition_users(conn, market="NYSE", day=DAY, markets=load_markets())
    users = sorted({*users, ODD_USER})
    held = partition_instruments(conn, users)
    ids = [held[key][0] for key in sorted(held)]  # the loaded asset's id is random
    at = datetime(2026, 11, 27, 6, tzinfo=UTC)
    prices = {
        str(a): (Decimal("12.50"), "GBP" if i % 7 == 0 else "USD", at)
        for i, a in enumerate(ids)
        if i % 3
    }
    snapshot = MarketSnapshot(prices, load_market_snapshot(conn, ids, day=DAY).fundamentals, 0)
    loaded = load_batch(conn, users, snapshot=snapshot)
    odd = str(held[("NYSE", "ODD")][0])
    loaded.batch.holdings.replace({"asset_id": {odd: "odd"}}, inplace=True)
    return loaded


def test_the_batch_load_is_the_same_on_postgresql_and_sqlite(
    pg_conn: Connection, sqlite_engine: Engine
) -> None:
    with sqlite_engine.connect() as sqlite_conn:
        try:
            lite = _load_batch(sqlite_conn)
        finally:
            sqlite_conn.rollback()
    pg = _load_batch(pg_conn)
    for name in ("users", "classes", "holdings", "rules"):
        assert _rows(getattr(pg.batch, name)) == _rows(getattr(lite.batch, name)), name
        assert list(getattr(pg.batch, name).columns) == list(getattr(lite.batch, name).columns)
    assert len(pg.batch.holdings) > 100
    assert _rows(pg.batch.fundamentals.sort_index()) == _rows(lite.batch.fundamentals.sort_index())
    assert len(pg.batch.fundamentals) > 50
    assert pg.criteria_versions == lite.criteria_versions
    assert pg.holding_markets == lite.holding_markets
    # Ids as text, numerics without the zeros of their column's scale, on both.
    odd = str(ODD_USER)
    b = pg.batch
    assert b.users[b.users.user_id == odd].values.tolist() == [[odd, "EUR", None, 1]]
    assert b.classes[b.classes.user_id == odd].values.tolist() == [
        [odd, 'Tab\there \\ "q"', Decimal("0.5"), Decimal("100"), None, Decimal("250")]
    ]
    [holding] = b.holdings[b.holdings.user_id == odd].values.tolist()
    assert repr(holding[4]) == "Decimal('1.5')"
    [rule] = b.rules[b.rules.user_id == odd].values.tolist()
    assert [repr(x) for x in rule[5:7]] == ["Decimal('1.1')", "Decimal('20')"]


def test_copy_writes_keep_every_character(db_conn: Connection) -> None:
    """Tabs, newlines and backslashes in text and JSON survive the COPY text format (and
    the executemany path of SQLite)."""
    user = uuid.uuid4()
    insert_users(db_conn, [user])
    asset = insert_asset(db_conn, "NY\tSE\\", "X")
    cid = uuid.uuid4()
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    odd = {"name": 'a\tb\nc\\d"e', "list": ["\r", "é"]}
    pretty = '{\n\t"k": "v\\\\w"\n}'  # JSON whitespace: raw newline and tab
    _append_events(
        db_conn,
        [
            (cid, str(user), "CALC_STARTED", orjson.dumps(odd).decode()),
            (cid, str(user), "INPUTS_CAPTURED", pretty),
            (cid, user, "SCORES_COMPUTED", odd),
        ],
        at=now,
    )
    _replace_scores(
        db_conn,
        [
            (
                str(user),
                str(asset),
                "NY\tSE\\",
                "3.5000",
                "10",
                2,
                '{"criteriaCount":1,"topContributor":"a\\\\b"}',
            )
        ],
        user_ids=[user],
        day=DAY,
        correlation_id=cid,
        computed_at=now,
    )
    _add_calculation_assets(
        db_conn, [(str(asset), str(user), "3.5000")], correlation_id=cid, calculated_at=now
    )
    e = calculation_events_table.c
    got = dict(
        db_conn.execute(select(e.event_type, e.payload).where(e.correlation_id == cid)).all()
    )
    assert got == {"CALC_STARTED": odd, "INPUTS_CAPTURED": {"k": "v\\w"}, "SCORES_COMPUTED": odd}
    s = asset_scores_table.c
    row = db_conn.execute(select(s.market, s.score, s.breakdown).where(s.user_id == user)).one()
    assert row == ("NY\tSE\\", Decimal("3.5"), {"criteriaCount": 1, "topContributor": "a\\b"})
    a = calculation_assets_table.c
    assert db_conn.execute(select(a.score).where(a.user_id == user)).scalar_one() == Decimal("3.5")
    # Replacing the scores of the day leaves one row.
    _replace_scores(
        db_conn,
        [(str(user), str(asset), "M", "1", "10", 2, "{}")],
        user_ids=[user],
        day=DAY,
        correlation_id=cid,
        computed_at=now,
    )
    assert db_conn.execute(select(s.market).where(s.user_id == user)).scalars().all() == ["M"]


def test_event_payloads_come_back_by_user(db_conn: Connection) -> None:
    users = sorted(uuid.uuid4() for _ in range(3))
    cid = uuid.uuid4()
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    _append_events(
        db_conn,
        [(cid, u, "INPUTS_CAPTURED", {"n": i, "t": "x\ty"}) for i, u in enumerate(reversed(users))],
        at=now,
    )
    got = event_payloads(
        db_conn, correlation_id=cid, event_type="INPUTS_CAPTURED", user_ids=users[:2]
    )
    assert got == [(str(users[0]), {"n": 2, "t": "x\ty"}), (str(users[1]), {"n": 1, "t": "x\ty"})]


def test_tables_without_planner_statistics_are_analyzed_once(db_conn: Connection) -> None:
    if db_conn.dialect.name != "postgresql":
        assert ensure_statistics(db_conn) == []
        return
    db_conn.exec_driver_sql("CREATE TABLE holdings_stats_probe (x int)")
    db_conn.exec_driver_sql("INSERT INTO holdings_stats_probe SELECT generate_series(1, 500)")
    assert ensure_statistics(db_conn, ["holdings_stats_probe"]) == ["holdings_stats_probe"]
    assert ensure_statistics(db_conn, ["holdings_stats_probe"]) == []
    assert (
        db_conn.exec_driver_sql(
            "SELECT reltuples FROM pg_class WHERE relname = 'holdings_stats_probe'"
        ).scalar()
        == 500
    )
    ensure_statistics(db_conn)
    assert ensure_statistics(db_conn) == []


def test_asset_scores_are_each_users_current_scores(db_conn: Connection) -> None:
    """A newer night replaces a user's rows (a holding sold leaves none behind); a backfill
    of an older date leaves newer rows in place and writes those of users without any."""
    fresh, stale, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    insert_users(db_conn, [fresh, stale, new])
    a, b = insert_asset(db_conn, "NYSE", "A"), insert_asset(db_conn, "NYSE", "B")
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    s = asset_scores_table.c

    def night(day: date, users: list[uuid.UUID], assets: list[uuid.UUID], score: str) -> None:
        rows = [(str(u), str(x), "NYSE", score, "10", 1, "{}") for u in users for x in assets]
        _replace_scores(
            db_conn, rows, user_ids=users, day=day, correlation_id=uuid.uuid4(), computed_at=now
        )

    def current() -> set[tuple[uuid.UUID, uuid.UUID, date, Decimal]]:
        return set(db_conn.execute(select(s.user_id, s.asset_id, s.market_date, s.score)).all())

    night(date(2026, 11, 26), [fresh, stale], [a, b], "1")
    night(DAY, [fresh], [a], "2")
    expected = {
        (fresh, a, DAY, Decimal(2)),
        (stale, a, date(2026, 11, 26), Decimal(1)),
        (stale, b, date(2026, 11, 26), Decimal(1)),
    }
    assert current() == expected
    night(date(2026, 11, 25), [fresh, stale, new], [b], "3")  # a backfill
    assert current() == expected | {(new, b, date(2026, 11, 25), Decimal(3))}


def test_a_snapshot_is_stored_once_and_never_changed(db_conn: Connection) -> None:
    from overnight_pipeline.core.captured import snapshot_hash

    payload = {"rates": {"usdTo": {"EUR": "0.9"}, "asOf": None, "stale": False}}
    key = snapshot_hash(payload)
    now = datetime.now(UTC)
    ensure_months(db_conn, [now])
    insert_snapshot(db_conn, key=key, kind="market", payload=payload, calculated_at=now)
    insert_snapshot(
        db_conn, key=key, kind="market", payload={"other": "content"}, calculated_at=now
    )
    assert snapshots(db_conn, [key, "absent"]) == {key: payload}
    assert snapshot_hash(snapshots(db_conn, [key])[key]) == key
