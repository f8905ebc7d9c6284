"""A seeded PostgreSQL database, a Redis namespace and a helper that materialises a partition
through Dagster, for the pipeline tests."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import pytest
import redis
from dagster import DagsterInstance, Definitions, ExecuteInProcessResult
from sqlalchemy import Engine

from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.seed import seed
from overnight_pipeline.settings import Settings, load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.loader import load
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
    redis_namespace,
)

DAY = date(2026, 11, 27)  # a Friday: every default market is in session
BROKEN_USER = uuid.UUID("00000000-0000-4000-8000-00000000b0b0")


@dataclass
class Pipeline:
    settings: Settings
    engine: Engine
    redis: redis.Redis
    defs: Definitions
    instance: DagsterInstance

    def run(self, market: str, day: date, **kwargs: object) -> ExecuteInProcessResult:
        job = self.defs.resolve_job_def(OVERNIGHT_JOB)
        return job.execute_in_process(
            instance=self.instance, partition_key=partition_key(market, day), **kwargs
        )


def broken_user_file() -> dict:
    """A NYSE-only user whose base currency has no exchange rate: it must fail alone."""
    return {
        "assets": [{"market": "NYSE", "symbol": "BRKNX", "currency": "USD", "name": "Broken"}],
        "users": [
            {
                "id": str(BROKEN_USER),
                "baseCurrency": "XTS",
                "defaultContribution": "100",
                "active": True,
                "assetClasses": [{"name": "Stocks", "targetMin": "0", "targetMax": "100"}],
                "holdings": [
                    {"market": "NYSE", "symbol": "BRKNX", "quantity": "3", "assetClass": "Stocks"}
                ],
                "criteria": [
                    {
                        "id": "any",
                        "assetClass": "Stocks",
                        "metric": "pe_ratio",
                        "operator": "exists",
                        "points": 5,
                    }
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def pipeline_db() -> Iterator[str]:
    url = create_pg_database("overnight_pipeline")
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        seed(conn, users=150, seed=11, as_of=DAY)
        load(conn, parse_load_file(broken_user_file(), markets=load_markets()))
    engine.dispose()
    yield url
    drop_pg_database(url)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    yield from redis_namespace()


@pytest.fixture
def pipeline(pipeline_db: str, redis_prefix: str) -> Iterator[Pipeline]:
    settings = load_settings(
        database_url=pipeline_db, redis_url=REDIS_URL, cache_prefix=redis_prefix, user_batch_size=40
    )
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(REDIS_URL)
    with DagsterInstance.ephemeral() as instance:
        yield Pipeline(
            settings, engine, client, definitions_for(settings, env_vars=False), instance
        )
    client.close()
    engine.dispose()


RunPartition = Callable[[str, date], ExecuteInProcessResult]


def sensor_resources(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """The resources a run sensor takes, as `definitions_for(settings)` binds them (a test
    replaces one, e.g. `tracing`, by keyword)."""
    return {
        key: value
        for key, value in definitions_for(settings, env_vars=False).resources.items()
        if key in ("database", "alerting", "tracing")
    } | overrides
