"""`overnight backfill` through the real command (BEHAVIOUR §10; issue 22 item 7): the market-dates
of a range are judged from their job-run rows; those missing, failed, partial or late (as
asked) are listed newest first with --dry-run, or queued as one run of overnight_job per
market-date on the Dagster instance of DAGSTER_HOME."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, DagsterRunStatus

from overnight_pipeline.cli import main
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.runner import prepare_home
from overnight_pipeline.settings import get_settings
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline_tests.support.databases import migrated_pg_database

OVERNIGHT = str(Path(sys.executable).with_name("overnight"))


def _at(day: date, hour: int) -> datetime:
    return datetime(day.year, day.month, day.day, hour, tzinfo=UTC)


# NYSE opens at 14:30 UTC and B3 at 13:00 UTC in late November; Thursday 26 November 2026
# is Thanksgiving (no NYSE session); 28-29 November are a weekend.
BEFORE, AFTER = 10, 20
ROWS = [
    ("NYSE", date(2026, 11, 23), "completed", BEFORE),  # ready
    ("NYSE", date(2026, 11, 24), "failed", BEFORE),  # failed
    ("NYSE", date(2026, 11, 25), "completed", AFTER),  # late
    ("NYSE", date(2026, 11, 27), "partial", BEFORE),  # ready-partial
    ("B3", date(2026, 11, 23), "completed", BEFORE),
    ("B3", date(2026, 11, 24), "completed", BEFORE),
    ("B3", date(2026, 11, 25), "completed", BEFORE),
    ("B3", date(2026, 11, 26), "started", BEFORE),  # running after the open
    # B3 2026-11-27: no run (missing)
]


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    for url in migrated_pg_database("overnight_backfill_cmd"):
        engine = make_engine(url)
        with engine.begin() as conn:
            for market, day, status, hour in ROWS:
                run = job_runs.JobRun(
                    run_id=str(uuid.uuid4()),
                    correlation_id=uuid.uuid4(),
                    started_at=_at(day, hour - 1),
                    status=status,
                    market=market,
                    market_date=day,
                    completed_at=None if status == "started" else _at(day, hour),
                    users_processed=10,
                    users_failed=2 if status == "partial" else 0,
                    metrics={"cache_warmed": status in ("completed", "partial")},
                )
                if status == "started":
                    job_runs.record_started(conn, run)
                else:
                    job_runs.record_finished(conn, run)
        engine.dispose()
        yield url


def overnight(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DAGSTER"))}
    full.update(env)
    return subprocess.run(
        [OVERNIGHT, "backfill", *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_dry_run_lists_the_nights_to_run_again_newest_first(db_url: str, tmp_path: Path) -> None:
    done = overnight(
        "--from", "2026-11-23", "--to", "2026-11-29", "--markets", "NYSE,B3",
        "--only", "missing,failed,partial,late", "--dry-run",
        cwd=tmp_path, DATABASE_URL=db_url,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    chosen = [line.split()[2:5] for line in done.stdout.splitlines() if line.startswith("would")]
    assert chosen == [
        ["NYSE", "2026-11-27", "ready-partial"],
        ["B3", "2026-11-27", "missing"],
        ["NYSE", "2026-11-25", "late"],
        ["NYSE", "2026-11-24", "failed"],
    ]
    # Ready nights, the running one and the days without a session are left.
    assert "14 market-dates" in done.stdout and "4 missing,failed,partial,late" in done.stdout
    assert "5 no-session" in done.stdout and "1 running" in done.stdout
    assert "4 ready" in done.stdout and "dry run: nothing launched" in done.stdout


def test_by_default_every_configured_market_is_judged(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", db_url)
    get_settings.cache_clear()
    try:
        args = ["--from", "2026-11-23", "--to", "2026-11-27", "--only", "missing", "--dry-run"]
        assert main(["backfill", *args]) == 0
    finally:
        get_settings.cache_clear()
    out = capsys.readouterr().out
    lines = [ln.split()[2:5] for ln in out.splitlines() if ln.startswith("would")]
    # The four other markets never ran at all: every session of theirs is missing.
    assert ["B3", "2026-11-27", "missing"] in lines
    assert not [ln for ln in lines if ln[0] == "NYSE"]
    # Tokyo: 23 November is Labour Thanksgiving Day, no session.
    assert sum(ln[0] == "TSE" for ln in lines) == 4 and "30 market-dates" in out
    assert [ln[1] for ln in lines] == sorted((ln[1] for ln in lines), reverse=True)


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from", "2026-11-27", "--to", "2026-11-23", "--only", "missing"], "not a range"),
        (["--from", "2024-12-30", "--to", "2025-01-02", "--only", "missing"], "start on"),
        (["--from", "2026-11-23", "--to", "2026-11-27", "--only", "broken"], "--only takes"),
        (["--from", "2026-11-23", "--to", "2026-11-27", "--markets", "MOON", "--only", "late"],
         "--markets must be"),
    ],
)  # fmt: skip
def test_bad_arguments_exit_2_before_any_work(
    args: list[str], says: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1:1/x")  # never reached
    get_settings.cache_clear()
    try:
        assert main(["backfill", *args]) == 2
    finally:
        get_settings.cache_clear()
    assert says in capsys.readouterr().err


def test_a_launch_queues_one_run_per_market_date_on_the_instance(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    home = prepare_home(tmp_path / "dagster-home")  # deploy/dagster.yaml: the run queue
    done = overnight(
        "--from", "2026-11-24", "--to", "2026-11-27", "--markets", "NYSE,B3",
        "--only", "missing,partial,failed",
        cwd=tmp_path, DATABASE_URL=db_url, DAGSTER_HOME=str(home),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "3 runs queued" in done.stdout
    with DagsterInstance.from_config(str(home)) as instance:
        records = instance.get_run_records(order_by="create_timestamp", ascending=True)
        assert [r.dagster_run.tags["dagster/partition"] for r in records] == [
            "2026-11-27|NYSE",
            "2026-11-27|B3",
            "2026-11-24|NYSE",
        ]
        for record in records:
            run = record.dagster_run
            key = run.tags["dagster/partition"]
            assert run.job_name == OVERNIGHT_JOB and run.status == DagsterRunStatus.QUEUED
            assert run.tags["dagster/partition/date"] == key.split("|")[0]
            assert run.tags["dagster/partition/market"] == key.split("|")[1]
            assert run.tags["overnight/trigger"] == "backfill"
            assert "dagster/backfill" not in run.tags  # not a backfill launched with tags
            assert run.remote_job_origin.location_name == "overnight_pipeline.definitions"
            assert f"-> run {run.run_id}" in done.stdout
