"""`overnight run` and `overnight demo` (BEHAVIOUR §10), as an operator types them."""

from __future__ import annotations

import os
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from sqlalchemy import func, select

from overnight_pipeline import runner
from overnight_pipeline.cli import main
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.runner import demo_sessions
from overnight_pipeline.settings import get_settings
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import (
    calculation_events_table,
    overnight_job_runs_table,
    recommendations_table,
)
from overnight_pipeline_tests.pipeline.conftest import DAY
from overnight_pipeline_tests.support.databases import REDIS_URL


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """A clean environment in a scratch directory; settings re-read for each test."""
    for name in ("DATABASE_URL", "REDIS_URL", "CACHE_PREFIX", "DAGSTER_HOME", "DAGSTER_PG_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def test_overnight_run_materialises_one_partition(
    env: pytest.MonkeyPatch, pipeline_db: str, redis_prefix: str, capsys: pytest.CaptureFixture
) -> None:
    env.setenv("DATABASE_URL", pipeline_db)
    env.setenv("REDIS_URL", REDIS_URL)
    env.setenv("CACHE_PREFIX", redis_prefix)
    assert main(["run", "--market", "TSE", "--date", DAY.isoformat()]) == 0
    out = capsys.readouterr().out
    assert f"TSE {DAY.isoformat()}" in out
    engine = make_engine(pipeline_db)
    r = recommendations_table
    with engine.connect() as conn:
        persisted = conn.scalar(
            select(func.count()).where(r.c.market == "TSE", r.c.market_date == DAY)
        )
    assert persisted and f"{persisted} written" in out
    with engine.connect() as conn:
        job = conn.execute(
            select(
                overnight_job_runs_table.c.status, overnight_job_runs_table.c.users_processed
            ).where(
                overnight_job_runs_table.c.market == "TSE",
                overnight_job_runs_table.c.market_date == DAY,
            )
        ).all()
    # No daemon watches an in-process run: the command records its job run itself.
    engine.dispose()
    assert [(status, n) for status, n in job][-1:] == [("completed", persisted)]
    # The run went to the Dagster home `make dev` serves, with its materialisations.
    with DagsterInstance.from_config(str(Path(".data") / "dagster-home")) as instance:
        (record,) = instance.get_run_records()
        assert record.dagster_run.tags["dagster/partition"] == f"{DAY.isoformat()}|TSE"
        assert record.dagster_run.tags["overnight/worker_pid"] == str(os.getpid())
        assert f"{DAY.isoformat()}|TSE" in instance.get_materialized_partitions(
            AssetKey("recommendation_cache")
        )


def test_overnight_run_names_a_bad_market_or_date(env, capsys) -> None:
    assert main(["run", "--market", "NOPE", "--date", "2026-11-27"]) == 2
    assert "--market must be one of" in capsys.readouterr().err
    assert main(["run", "--market", "NYSE", "--date", "27/11/2026"]) == 2
    assert "'27/11/2026'" in capsys.readouterr().err


def test_the_demo_works_with_embedded_defaults_and_no_redis(env, capsys) -> None:
    env.setenv("REDIS_URL", "redis://127.0.0.1:9/0")  # nothing listens there
    # A Saturday afternoon in every market: each runs Monday's session, never Saturday's.
    env.setattr(runner, "clock", lambda: SATURDAY)
    assert main(["demo", "--users", "60"]) == 0
    out = capsys.readouterr().out
    assert "unreachable, the cache step is skipped" in out
    assert "skipped (Redis unreachable)" in out
    assert "make dev" in out and "overnight token" in out
    assert "NYSE   2026-12-07 (next session: today (2026-12-05) is Saturday, weekend)" in out
    engine = make_engine(get_settings().database_url)
    with engine.connect() as conn:
        users = conn.scalar(select(func.count()).select_from(recommendations_table))
        events = conn.scalar(select(func.count()).select_from(calculation_events_table))
        days = set(conn.scalars(select(recommendations_table.c.market_date).distinct()))
    engine.dispose()
    assert get_settings().database_url.startswith("sqlite")
    assert users and events == 4 * users
    assert days == {date(2026, 12, 7)}


SATURDAY = datetime(2026, 12, 5, 15, 0, tzinfo=UTC)


def test_the_demo_runs_each_markets_current_or_next_session() -> None:
    markets = load_markets()
    chosen = {s.market: s for s in demo_sessions(markets, SATURDAY)}
    assert {m: s.day for m, s in chosen.items()} == dict.fromkeys(markets, date(2026, 12, 7))
    assert str(chosen["TSE"]) == (
        "TSE    2026-12-07 (next session: today (2026-12-06) is Sunday, weekend)"
    )  # 00:00 on Sunday in Tokyo
    # Sunday evening in New York is already Monday in UTC and in Tokyo.
    sunday_evening = datetime(2026, 12, 7, 2, 0, tzinfo=UTC)
    chosen = {s.market: s for s in demo_sessions(markets, sunday_evening)}
    assert chosen["NYSE"].day == date(2026, 12, 7) and "Sunday, weekend" in chosen["NYSE"].why
    assert str(chosen["TSE"]) == "TSE    2026-12-07 (today)"
    # Christmas: New York, London, Frankfurt and São Paulo are closed, Tokyo is not.
    christmas = datetime(2026, 12, 25, 15, 0, tzinfo=UTC)
    chosen = {s.market: s for s in demo_sessions(markets, christmas)}
    assert str(chosen["NYSE"]) == (
        "NYSE   2026-12-28 (next session: today (2026-12-25) is Friday, Christmas (XNYS holiday))"
    )
    assert chosen["XETRA"].day == date(2026, 12, 28) and "holiday" in chosen["XETRA"].why
    assert chosen["TSE"].day == date(2026, 12, 28)  # 00:00 on Saturday in Tokyo
    morning = {s.market: s for s in demo_sessions(markets, christmas - timedelta(hours=15))}
    assert str(morning["TSE"]) == "TSE    2026-12-25 (today)"  # 09:00 on Friday in Tokyo
