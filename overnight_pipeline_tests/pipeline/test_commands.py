"""`overnight run` and `overnight demo` (SPEC §10), as an operator types them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from dagster import AssetKey, DagsterInstance
from sqlalchemy import func, select

from overnight_pipeline.cli import main
from overnight_pipeline.settings import get_settings
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import (
    calculation_events_table,
    overnight_job_runs_table,
    recommendations_table,
)
from overnight_pipeline_tests.pipeline.conftest import DAY, REDIS_URL


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
    assert main(["demo", "--users", "60"]) == 0
    out = capsys.readouterr().out
    assert "unreachable, the cache step is skipped" in out
    assert "skipped (Redis unreachable)" in out
    assert "make dev" in out and "overnight token" in out
    engine = make_engine(get_settings().database_url)
    with engine.connect() as conn:
        users = conn.scalar(select(func.count()).select_from(recommendations_table))
        events = conn.scalar(select(func.count()).select_from(calculation_events_table))
    engine.dispose()
    assert get_settings().database_url.startswith("sqlite")
    assert users and events == 4 * users
