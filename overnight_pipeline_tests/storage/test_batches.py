"""What a partition's calculation reads (`storage.batches`): the batch frames, the same on
PostgreSQL and SQLite, and the planner statistics of the tables they come from."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pandas as pd
from sqlalchemy import Connection, Engine

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
from overnight_pipeline.storage.loader import load

DAY = date(2026, 11, 27)
ODD_USER = uuid.UUID("00000000-0000-4000-8000-0000000000dd")


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
