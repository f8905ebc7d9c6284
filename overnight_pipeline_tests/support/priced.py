"""A database of NYSE users whose market data of `DAY` is fetched and stored, as the
calculation step finds it after the market-data steps: for tests of the calculation step
called directly (no Dagster run)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from typing import Any

from sqlalchemy import Engine

from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.providers.synthetic import SyntheticProvider
from overnight_pipeline.seed import seed
from overnight_pipeline.steps.market_data import fetch_fundamentals, fetch_prices, fetch_rates
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline_tests.support.databases import migrated_pg_database

DAY = date(2026, 11, 27)
NYSE = tuple(m for m in DEFAULT_MARKETS if m.code == "NYSE")
MARKETS = {m.code: m for m in NYSE}
KW: dict[str, Any] = {"market": "NYSE", "day": DAY, "markets": MARKETS}


def priced_nyse_engine(prefix: str, *, users: int, seed_value: int) -> Iterator[Engine]:
    """An engine on a throwaway PostgreSQL database at Alembic's head with `users` seeded
    NYSE users and `DAY`'s rates, prices and fundamentals stored (a fixture body)."""
    for url in migrated_pg_database(prefix):
        engine = make_engine(url)
        with engine.begin() as conn:
            seed(conn, users=users, seed=seed_value, as_of=DAY, markets=NYSE)
        provider = SyntheticProvider(MARKETS)
        fetch_rates(engine, provider, **KW)
        fetch_prices(engine, provider, **KW)
        fetch_fundamentals(engine, provider, **KW)
        yield engine
        engine.dispose()
