"""One broken user never blocks the rest (BEHAVIOUR §7): a partition of four users, one
of whom holds a CHF asset while the rate file has no CHF rate. Market data comes from
`files:<dir>` (the provider an operator points at CSV exports), the database is its own, so
no stored CHF rate from another test can stand in for the missing one."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
import redis
from dagster import DagsterEventType, DagsterInstance, build_run_status_sensor_context
from sqlalchemy import select

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.defs.sensors import SUCCEEDED_SENSOR
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.job_runs import job_run
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import calculation_events_table, recommendations_table
from overnight_pipeline_tests.pipeline.conftest import sensor_resources
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
)

DAY = date(2026, 11, 25)
HEALTHY = [uuid.UUID(f"00000000-0000-4000-8000-0000000c000{i}") for i in (1, 2, 3)]
BROKEN = uuid.UUID("00000000-0000-4000-8000-0000000cbad0")


def user(user_id: uuid.UUID, holdings: list[tuple[str, str]]) -> dict:
    return {
        "id": str(user_id),
        "baseCurrency": "GBP",
        "defaultContribution": "500.00",
        "active": True,
        "assetClasses": [{"name": "UK", "targetMin": "40", "targetMax": "100"}],
        "holdings": [
            {"market": "LSE", "symbol": s, "quantity": q, "assetClass": "UK"} for s, q in holdings
        ],
        "criteria": [
            {
                "id": "dy",
                "assetClass": "UK",
                "metric": "dividend_yield",
                "operator": "gt",
                "value": "1",
                "points": 10,
            }
        ],
    }


def load_document() -> dict:
    return {
        "assets": [
            {"market": "LSE", "symbol": "VOD", "currency": "GBP", "name": "Vodafone"},
            {"market": "LSE", "symbol": "BP", "currency": "GBP", "name": "BP"},
            {"market": "LSE", "symbol": "NESN", "currency": "CHF", "name": "Nestle (CHF line)"},
        ],
        "users": [
            user(HEALTHY[0], [("VOD", "100")]),
            user(HEALTHY[1], [("VOD", "10"), ("BP", "20")]),
            user(HEALTHY[2], [("BP", "5")]),
            user(BROKEN, [("VOD", "7"), ("NESN", "3")]),
        ],
    }


def write_market_files(directory: Path) -> None:
    directory.mkdir()
    (directory / "rates.csv").write_text(f"from,to,rate,as_of\nUSD,GBP,0.7900,{DAY}\n")
    (directory / "prices.csv").write_text(
        "market,symbol,price,currency,as_of\n"
        f"LSE,VOD,0.72,GBP,{DAY}\nLSE,BP,4.61,GBP,{DAY}\nLSE,NESN,88.10,CHF,{DAY}\n"
    )
    metrics = {"dividend_yield": "5.1"}
    row = ",".join(metrics.get(m, "") for m in METRICS)
    (directory / "fundamentals.csv").write_text(
        f"market,symbol,{','.join(METRICS)}\nLSE,VOD,{row}\nLSE,BP,{row}\nLSE,NESN,{row}\n"
    )


@pytest.fixture
def small_db() -> Iterator[str]:
    url = create_pg_database("overnight_four_users")
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        load(conn, parse_load_file(load_document(), markets=load_markets()))
    engine.dispose()
    yield url
    drop_pg_database(url)


def test_one_user_without_a_rate_fails_alone_in_a_partition_of_four(
    small_db: str, redis_prefix: str, tmp_path: Path
) -> None:
    files = tmp_path / "market-data"
    write_market_files(files)
    settings = load_settings(
        database_url=small_db,
        redis_url=REDIS_URL,
        cache_prefix=redis_prefix,
        market_data=f"files:{files}",
        retry_delay_seconds=0.05,
    )
    assert settings.max_failed_user_ratio == 0.05  # the default: 1 of 4 is far above it
    defs = definitions_for(settings, env_vars=False)
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def(OVERNIGHT_JOB).execute_in_process(
            instance=instance, partition_key=partition_key("LSE", DAY), raise_on_error=False
        )
        assert result.success
        # Every asset was materialised, the cache too.
        done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
        assert {"asset_scores", "recommendations", "recommendation_cache"} <= done
        # The ratio check is red, with ERROR severity, on both user steps.
        for asset in ("asset_scores", "recommendations"):
            (check,) = [
                e
                for e in result.get_asset_check_evaluations()
                if e.asset_key.to_user_string() == asset
                and e.check_name == "failed_users_within_limit"
            ]
            assert not check.passed and check.severity.value == "ERROR"
            assert check.description == f"{DAY}|LSE: failed ratio 25.00% (limit 5.00%)"

        engine = make_engine(small_db)
        cid = correlation_id_for(f"{result.run_id}:{DAY}|LSE")
        e, r = calculation_events_table.c, recommendations_table.c
        with engine.connect() as conn:
            events = conn.execute(
                select(e.user_id, e.event_type, e.payload).where(e.correlation_id == cid)
            ).all()
            recs = set(
                conn.scalars(select(r.user_id).where(r.market == "LSE", r.market_date == DAY))
            )
        per_user = Counter(u for u, _, _ in events)
        assert {u: per_user[u] for u in HEALTHY} == dict.fromkeys(HEALTHY, 4)
        assert recs == set(HEALTHY)
        broken = {t: p for u, t, p in events if u == BROKEN}
        assert set(broken) == {"CALC_STARTED", "CALC_COMPLETED"}
        assert broken["CALC_COMPLETED"]["status"] == "failed"
        assert "CHF" in broken["CALC_COMPLETED"]["error"]

        client = redis.Redis.from_url(REDIS_URL)
        try:
            cached = {
                u
                for u in [*HEALTHY, BROKEN]
                if client.exists(f"{redis_prefix}recs:{u}")
                and client.exists(f"{redis_prefix}portfolio:{u}")
            }
        finally:
            client.close()
        assert cached == set(HEALTHY)

        # The job-run row the sensor writes: partial, the broken user named.
        event = next(
            ev for ev in result.all_events if ev.event_type == DagsterEventType.RUN_SUCCESS
        )
        with build_run_status_sensor_context(
            sensor_name=SUCCEEDED_SENSOR,
            dagster_event=event,
            dagster_instance=instance,
            dagster_run=result.dagster_run,
            resources=sensor_resources(settings),
        ) as context:
            defs.resolve_sensor_def(SUCCEEDED_SENSOR)(context)
        with engine.connect() as conn:
            row = job_run(conn, result.run_id)
        engine.dispose()
    assert row is not None and row["status"] == "partial"
    assert (row["users_processed"], row["users_failed"]) == (4, 1)
    assert row["error_details"]["failed_users_sample"][0]["user"] == str(BROKEN)
