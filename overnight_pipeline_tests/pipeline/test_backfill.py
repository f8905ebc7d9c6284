"""A real backfill through Dagster's own machinery (BEHAVIOUR §9): the repository's `dagster.yaml`
on a PostgreSQL instance, `dagster-daemon run` (run queue, run launcher, sensors) and
`dagster job backfill -w workspace.yaml`, for 2 dates x 2 markets: two runs of each market, enough
to show the run queue's limits (one run per market at a time, two at most)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.scheduler.instigation import InstigatorType
from sqlalchemy import select

from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.sensors import FAILED_SENSOR, STARTED_SENSOR, SUCCEEDED_SENSOR
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import overnight_job_runs_table
from overnight_pipeline_tests.support.dagster_dev import (
    ASSETS,
    BIN,
    REPO,
    make_dagster_home,
    stop_process_group,
    wait_for,
)
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    drop_pg_database,
)

DAYS = (date(2026, 11, 16), date(2026, 11, 17))
MARKETS = ("B3", "XETRA")
KEYS = [f"{d.isoformat()}|{m}" for d in DAYS for m in MARKETS]


@pytest.fixture
def dagster_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A DAGSTER_HOME with the repository's dagster.yaml on a fresh PostgreSQL database."""
    home, url = make_dagster_home(tmp_path / "dagster-home")
    monkeypatch.setenv("DAGSTER_PG_URL", home.pg_url)
    yield home.home
    drop_pg_database(url)


def test_the_repository_dagster_yaml_loads_with_its_run_queue(dagster_home: Path) -> None:
    with DagsterInstance.from_config(str(dagster_home)) as instance:
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        # What the queued-run daemon applies (the `concurrency.runs` block, Dagster >= 1.10).
        queue = instance.get_concurrency_config().run_queue_config
        assert queue is not None and queue.max_concurrent_runs == 2
        (limit,) = queue.tag_concurrency_limits
        assert limit["key"] == "dagster/partition/market" and limit["limit"] == 1
        assert limit["value"] == {"applyLimitPerUniqueValue": True}
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        assert not instance.run_retries_enabled
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 300
        assert instance.run_monitoring_max_runtime_seconds == 6 * 3600


@pytest.fixture
def daemon_env(dagster_home: Path, pipeline_db: str, redis_prefix: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(
        {
            "DAGSTER_HOME": str(dagster_home),
            "DATABASE_URL": pipeline_db,
            "REDIS_URL": REDIS_URL,
            "CACHE_PREFIX": redis_prefix,
            "USER_BATCH_SIZE": "50",
            "RETRY_DELAY_SECONDS": "0.2",
            "SENSOR_INTERVAL_SECONDS": "5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


@pytest.fixture
def daemon(daemon_env: dict[str, str], tmp_path: Path) -> Iterator[Path]:
    """`dagster-daemon run` on the workspace, in a process group of its own (see
    stop_process_group)."""
    log = tmp_path / "daemon.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env=daemon_env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # A non-interactive shell starts children with SIGINT ignored; restore it, and
            # give the daemon its own process group (its code server and runs are in it).
            preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setsid()),
        )
        try:
            yield log
        finally:
            stop_process_group(process)


@pytest.mark.slow
def test_a_cli_backfill_of_two_dates_and_two_markets_runs_through_the_daemon(
    daemon: Path, daemon_env: dict[str, str], dagster_home: Path, pipeline_db: str
) -> None:
    with DagsterInstance.from_config(str(dagster_home)) as instance:

        def sensors_ready() -> bool:
            states = instance.all_instigator_state(instigator_type=InstigatorType.SENSOR)
            ready = {
                s.name
                for s in states
                if s.instigator_data is not None and getattr(s.instigator_data, "cursor", None)
            }
            return {STARTED_SENSOR, SUCCEEDED_SENSOR, FAILED_SENSOR} <= ready

        # The CLI loads the workspace itself (~30 s here): start it while the daemon starts.
        backfill = subprocess.Popen(
            [
                str(BIN / "dagster"),
                "job",
                "backfill",
                "-w",
                "workspace.yaml",
                "-j",
                OVERNIGHT_JOB,
                "--partitions",
                ",".join(KEYS),
                "--noprompt",
            ],
            cwd=REPO,
            env=daemon_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            out, _ = backfill.communicate(timeout=240)
        finally:
            if backfill.poll() is None:
                backfill.kill()
        assert backfill.returncode == 0, out
        found = re.search(r"Launched backfill job `([^`]+)`", out)
        assert found, out
        backfill_id = found.group(1)
        # Run-status sensors watch from their first tick on. That tick comes a few seconds
        # after the daemon loads the workspace, long before a launched run can finish.
        wait_for("the job-run sensors' first ticks", sensors_ready, 120, daemon)

        def finished_runs() -> list[Any] | None:
            # Only this backfill's runs: a schedule could fire during the test.
            records = instance.get_run_records(
                RunsFilter(job_name=OVERNIGHT_JOB, tags={"dagster/backfill": backfill_id})
            )
            done = [r for r in records if r.dagster_run.is_finished]
            return records if len(records) == len(KEYS) and len(done) == len(KEYS) else None

        records = wait_for(f"{len(KEYS)} finished runs", finished_runs, 240, daemon)
        runs = {r.dagster_run.tags["dagster/partition"]: r for r in records}
        assert sorted(runs) == sorted(KEYS)
        assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}

        # Every asset of every partition is materialised.
        for asset in ASSETS:
            assert set(KEYS) <= set(instance.get_materialized_partitions(AssetKey(asset))), asset

        # The run queue of dagster.yaml held: at most two runs at once, one per market.
        spans = [
            (r.start_time, r.end_time, r.dagster_run.tags["dagster/partition/market"])
            for r in records
        ]
        for start, end, market in spans:
            assert start is not None and end is not None
            overlapping = [m for s, e, m in spans if s < end and e > start]  # itself included
            assert len(overlapping) <= 2 and overlapping.count(market) == 1

    # The job-run sensors recorded every run, with its partition and counts.
    engine = make_engine(pipeline_db)
    j = overnight_job_runs_table.c
    run_ids = {r.dagster_run.run_id for r in records}

    def recorded() -> list[Any] | None:
        with engine.connect() as conn:
            rows = conn.execute(
                select(
                    j.run_id,
                    j.status,
                    j.market,
                    j.market_date,
                    j.users_processed,
                    j.users_failed,
                    j.metrics,
                ).where(j.run_id.in_(run_ids))
            ).all()
        return rows if len(rows) == len(KEYS) and all(r.status != "started" for r in rows) else None

    try:
        rows = wait_for(f"{len(KEYS)} finished overnight_job_runs rows", recorded, 120, daemon)
    finally:
        engine.dispose()
    by_key = {f"{r.market_date.isoformat()}|{r.market}": r for r in rows}
    assert sorted(by_key) == sorted(KEYS)
    for key, row in by_key.items():
        assert row.status == "completed", (key, row.status)
        assert row.run_id == runs[key].dagster_run.run_id
        assert row.users_processed > 0 and row.users_failed == 0
        assert row.metrics["partitions"] == [key] and row.metrics["process_users_ms"] > 0
