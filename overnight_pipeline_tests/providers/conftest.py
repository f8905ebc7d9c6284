"""Fixtures of the provider tests: one dataset, a real local HTTP server, a database of
stored values (its own throwaway PostgreSQL database, committed, dropped at the end)."""

from __future__ import annotations

import csv
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, select

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Instrument,
    PricesResult,
    RatesResult,
)
from overnight_pipeline.providers.resilience import HttpOptions
from overnight_pipeline.storage.bulk import upsert
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.market_data import store_fundamentals, store_prices, store_rates
from overnight_pipeline.storage.models import assets_table
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database
from overnight_pipeline_tests.support.fake_market import (
    Dataset,
    FakeMarketServer,
    running,
    synthetic_dataset,
)

DAY = date(2026, 11, 30)
INSTRUMENTS: list[Instrument] = [
    ("NYSE", "KO"),
    ("NYSE", "PEP"),
    ("NASDAQ", "AAPL"),
    ("B3", "PETR4"),
    ("B3", "ITSA4"),
    ("LSE", "VOD"),
    ("TSE", "7203"),
    ("XETRA", "SAP"),
]
CURRENCIES = ["BRL", "EUR", "GBP", "JPY"]
UNKNOWN_INSTRUMENT: Instrument = ("NOWHERE", "ZZZZ")
UNKNOWN_CURRENCY = "XXX"
STORED_DAY = DAY - timedelta(days=2)

# Small times keep the suite fast; each test that needs other knobs builds its own.
FAST = HttpOptions(
    timeout=1.0,
    connect_timeout=0.5,
    max_retries=2,
    backoff_base=0.02,
    backoff_max=0.1,
    retry_after_max=5.0,
    rate_limit=1000.0,
    concurrency=4,
    breaker_threshold=50,
    breaker_cooldown=0.3,
)


@pytest.fixture(scope="session")
def dataset() -> Dataset:
    data = synthetic_dataset(INSTRUMENTS, CURRENCIES, DAY)
    nulls = sum(v is None for values in data.fundamentals.values() for v in values.values())
    assert nulls > 0, "the contract dataset should exercise null fundamentals"
    return data


@pytest.fixture(scope="session")
def fake_server_session(dataset: Dataset) -> Iterator[FakeMarketServer]:
    with running(dataset) as fake:
        yield fake


@pytest.fixture
def fake_server(fake_server_session: FakeMarketServer, dataset: Dataset) -> FakeMarketServer:
    """The shared server, its script and request log cleared for this test."""
    fake_server_session.reset(dataset)
    return fake_server_session


def write_csv_files(directory: Path, data: Dataset) -> Path:
    """The dataset in the `files:<dir>` layout of BEHAVIOUR §10."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / "prices.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["market", "symbol", "price", "currency", "as_of"])
        for (market, symbol), quote in data.quotes.items():
            writer.writerow(
                [market, symbol, format(quote.price, "f"), quote.currency, quote.as_of.isoformat()]
            )
    with (directory / "fundamentals.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["market", "symbol", *METRICS])
        for (market, symbol), values in data.fundamentals.items():
            cells = ["" if values[m] is None else format(values[m], "f") for m in METRICS]
            writer.writerow([market, symbol, *cells])
    with (directory / "rates.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["from", "to", "rate", "as_of"])
        for currency, rate in data.rates.items():
            writer.writerow(["USD", currency, format(rate, "f"), data.day.isoformat()])
    return directory


@pytest.fixture(scope="session")
def csv_dir(tmp_path_factory: pytest.TempPathFactory, dataset: Dataset) -> Path:
    return write_csv_files(tmp_path_factory.mktemp("market-files"), dataset)


def asset_rows(instruments: list[Instrument]) -> list[dict[str, object]]:
    currency = {"NYSE": "USD", "NASDAQ": "USD", "B3": "BRL", "LSE": "GBP", "TSE": "JPY"}
    return [
        {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"asset:{m}:{s}"),
            "market": m,
            "symbol": s,
            "currency": currency.get(m, "EUR"),
            "name": None,
        }
        for m, s in instruments
    ]


def store_dataset(engine: Engine, data: Dataset, day: date) -> dict[Instrument, uuid.UUID]:
    """Commit the dataset's assets and values as if a run on `day` had fetched them."""
    with engine.begin() as conn:
        upsert(
            conn, assets_table, asset_rows(list(data.quotes)), key=["market", "symbol"], update=[]
        )
        a = assets_table
        ids = {(m, s): i for i, m, s in conn.execute(select(a.c.id, a.c.market, a.c.symbol))}
        store_rates(conn, RatesResult(data.rates, "synthetic", _as_of(day)), day=day)
        store_prices(conn, PricesResult(data.quotes, [], [], "synthetic"), day=day, asset_ids=ids)
        store_fundamentals(
            conn,
            FundamentalsResult(data.fundamentals, [], [], "synthetic", as_of=_as_of(day)),
            day=day,
            asset_ids=ids,
        )
    return ids


def _as_of(day: date) -> datetime:
    return datetime.combine(day, time(6), UTC)


@pytest.fixture(scope="session")
def market_db() -> Iterator[Engine]:
    """A database of its own: the stored-values tests commit, as the pipeline would."""
    url = create_pg_database("overnight_providers")
    try:
        migrate(url)
        engine = make_engine(url)
        yield engine
        engine.dispose()
    finally:
        drop_pg_database(url)


@pytest.fixture(scope="session")
def stored_engine(market_db: Engine, dataset: Dataset) -> Engine:
    """`market_db` holding the dataset as stored two days before DAY."""
    store_dataset(market_db, dataset, STORED_DAY)
    return market_db
