"""Audit retention (BEHAVIOUR §4): on PostgreSQL the months wholly older than two
years are dropped as partitions; on SQLite exactly the rows older than two years go, in
bounded batches."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, DagsterRun, DagsterRunStatus, job, op
from dagster._core.storage.runs.schema import RunsTable
from sqlalchemy import Engine, event, insert, select, text
from sqlalchemy.exc import OperationalError

from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.retention import RETENTION_JOB, prune_dagster_history
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    calculation_snapshots_table,
    overnight_job_runs_table,
)
from overnight_pipeline.storage.partitions import ensure_months, existing, month_of, next_month
from overnight_pipeline.storage.retention import delete_expired, retention_cutoff
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
CUTOFF = datetime(2024, 11, 29, 12, 0, tzinfo=UTC)
# Seconds relative to the cutoff: negative ones are older than two years.
AGES = (-400 * 86_400, -86_400, -61, -1, 0, 1, 3600, 400 * 86_400)


@pytest.fixture(scope="module")
def db_url() -> Iterator[str]:
    url = create_pg_database("overnight_retention")
    migrate(url)
    yield url
    drop_pg_database(url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    with engine.begin() as conn:
        for table in TABLES:
            conn.execute(table.delete())
    engine.dispose()


TABLES = (
    calculation_events_table,
    calculation_assets_table,
    calculation_snapshots_table,
    overnight_job_runs_table,
)
AGED_BY = {
    "calculation_events": "calculated_at",
    "calculation_assets": "calculated_at",
    "calculation_snapshots": "month",
    "overnight_job_runs": "started_at",
}


def seed_dated_rows(engine: Engine, stamps: list[datetime]) -> None:
    """One event, one calculation-asset row, one snapshot and one job run per timestamp
    (their months created first, as the pipeline does)."""
    with engine.begin() as conn:
        ensure_months(conn, stamps)
    with engine.begin() as conn:
        for at in stamps:
            cid = uuid.uuid4()
            conn.execute(
                insert(calculation_events_table).values(
                    correlation_id=cid,
                    user_id=uuid.uuid4(),
                    event_type="CALC_STARTED",
                    payload={"at": at.isoformat()},
                    created_at=at,
                    calculated_at=at,
                )
            )
            conn.execute(
                insert(calculation_assets_table).values(
                    asset_id=uuid.uuid4(),
                    correlation_id=cid,
                    calculated_at=at,
                    bucket=0,
                    user_ids=[uuid.uuid4() if conn.dialect.name == "postgresql" else "0" * 32],
                    scores=[1 if conn.dialect.name == "postgresql" else "1"],
                )
            )
            conn.execute(
                insert(calculation_snapshots_table).values(
                    hash=f"{cid.hex}{cid.hex}", month=month_of(at), kind="market", payload={}
                )
            )
            conn.execute(
                insert(overnight_job_runs_table).values(
                    id=uuid.uuid4(),
                    run_id=str(uuid.uuid4()),
                    job_type="overnight",
                    status="completed",
                    started_at=at,
                    completed_at=at + timedelta(minutes=1),
                    correlation_id=cid,
                )
            )


def remaining(engine: Engine) -> dict[str, list[Any]]:
    with engine.connect() as conn:
        return {t.name: sorted(conn.scalars(select(t.c[AGED_BY[t.name]]))) for t in TABLES}


def whole_months_kept(stamps: list[datetime], cutoff: datetime) -> dict[str, list[Any]]:
    """What dropping the months wholly before `cutoff` keeps, by table."""
    kept = [s for s in stamps if datetime.combine(next_month(month_of(s)), dtime(), UTC) > cutoff]
    return {
        name: sorted(month_of(s) if key == "month" else s for s in kept)
        for name, key in AGED_BY.items()
    }


def test_the_cutoff_is_two_calendar_years_before() -> None:
    assert retention_cutoff(NOW) == CUTOFF
    assert retention_cutoff(datetime(2028, 2, 29, 3, 0, tzinfo=UTC)) == datetime(
        2026, 2, 28, 3, 0, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        retention_cutoff(datetime(2026, 1, 1))


def test_postgresql_drops_the_months_wholly_before_the_cutoff_without_a_delete(
    engine: Engine,
) -> None:
    """Everything of a month that ended before the cutoff goes, by DETACH and DROP of its
    partitions (no DELETE reaches the server); the cutoff's own month is kept whole (data
    is kept at least two years); the coming months are created."""
    stamps = [CUTOFF + timedelta(seconds=s) for s in AGES]
    # The last day of the month before the cutoff's, and the first of the cutoff's.
    stamps += [datetime(2024, 10, 31, 23, 59, 59, tzinfo=UTC), datetime(2024, 11, 1, tzinfo=UTC)]
    seed_dated_rows(engine, stamps)
    statements: list[str] = []
    listen = lambda *args: statements.append(args[2])  # noqa: E731
    event.listen(engine, "before_cursor_execute", listen)
    try:
        report = delete_expired(engine, now=NOW)
    finally:
        event.remove(engine, "before_cursor_execute", listen)
    assert not [s for s in statements if s.lstrip().upper().startswith("DELETE")]
    assert remaining(engine) == whole_months_kept(stamps, CUTOFF)
    # 2023-07 (400 days before) and 2024-10 went, in all four tables.
    assert sorted(report.dropped) == sorted(
        f"{t.name}_p{m}" for t in TABLES for m in ("2023_10", "2024_10")
    )
    months = {m for (_, m) in existing_months(engine)}
    assert date(2024, 10, 1) not in months and date(2024, 11, 1) in months
    assert {date(2026, 11, 1), date(2026, 12, 1), date(2027, 1, 1)} <= months
    assert report.deleted["calculation_events"] >= 0
    # Nothing older is left: a second sweep drops nothing.
    assert delete_expired(engine, now=NOW).dropped == []


def existing_months(engine: Engine) -> set[tuple[str, date]]:
    with engine.connect() as conn:
        return set(existing(conn))


def test_a_detach_blocked_by_a_writer_gives_up_and_drops_nothing(engine: Engine) -> None:
    seed_dated_rows(engine, [CUTOFF - timedelta(days=60), CUTOFF + timedelta(days=1)])
    before = remaining(engine)
    with engine.connect() as holder:
        # A transaction still open on the table (a writer of the current month).
        holder.execute(select(calculation_events_table.c.id).limit(1)).all()
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            delete_expired(engine, now=NOW, lock_timeout="200ms")
        assert time.monotonic() - started < 4
        holder.rollback()
    assert remaining(engine) == before
    assert len(delete_expired(engine, now=NOW).dropped) == 4


def test_the_retention_job_reports_what_it_dropped(db_url: str, engine: Engine) -> None:
    now = datetime.now(UTC)
    cutoff = retention_cutoff(now)
    stamps = [cutoff - timedelta(days=62), cutoff - timedelta(days=31), cutoff + timedelta(days=1)]
    seed_dated_rows(engine, stamps)
    settings = load_settings(database_url=db_url, retention_batch_size=1)
    defs = definitions_for(settings, env_vars=False)
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def(RETENTION_JOB).execute_in_process(instance=instance)
    assert result.success
    outputs = {e.step_key: e for e in result.all_node_events if e.is_successful_output}
    assert sorted(outputs) == ["audit_retention", "dagster_history"]
    meta = {k: v.value for k, v in outputs["audit_retention"].step_output_data.metadata.items()}
    history = {k: v.value for k, v in outputs["dagster_history"].step_output_data.metadata.items()}
    assert history["history_days"] == 90 and history["runs_deleted"] == 0
    gone = {f"p{month_of(s):%Y_%m}" for s in stamps[:2]}
    assert sorted(meta["partitions_dropped"]) == sorted(
        f"{t.name}_{m}" for t in TABLES for m in gone
    )
    assert abs(meta["cutoff"] - cutoff.timestamp()) < 60
    assert remaining(engine) == whole_months_kept(stamps, cutoff)
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM calculation_events")).scalar() == 1


def test_retention_works_on_the_embedded_sqlite_database_too(tmp_path: Path) -> None:
    """SQLite has no partitions: exactly the rows older than the cutoff are deleted, in
    batches (a snapshot's month once wholly before it)."""
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        stamps = [CUTOFF + timedelta(seconds=s) for s in AGES]
        seed_dated_rows(engine, stamps)
        report = delete_expired(engine, now=NOW, batch_size=3)
        kept = [s for s in stamps if s >= CUTOFF]
        expected = {name: kept for name in AGED_BY}
        expected["calculation_snapshots"] = sorted(
            month_of(s) for s in stamps if month_of(s) >= month_of(CUTOFF)
        )
        assert remaining(engine) == expected
        old = len(stamps) - len(kept)
        assert report.deleted["calculation_events"] == old
        assert report.deleted["overnight_job_runs"] == old
        # Four old rows per table at three per transaction (2 batches), one old snapshot (1).
        assert report.batches == 3 * 2 + 1
        assert delete_expired(engine, now=NOW, batch_size=3).total == 0
    finally:
        engine.dispose()


@op
def _noop(context) -> None:  # type: ignore[no-untyped-def]
    context.log.info("a run with an event log")


@job
def _tiny_job() -> None:
    _noop()


def test_dagster_runs_older_than_the_history_days_go_with_their_event_logs(
    tmp_path: Path,
) -> None:
    """A real (SQLite) instance with finished runs 100 and 10 days old and an old unfinished run:
    only the old finished ones go, event logs included, in batches."""
    now = datetime.now(UTC)
    with DagsterInstance.local_temp(str(tmp_path)) as instance:
        runs = [_tiny_job.execute_in_process(instance=instance).run_id for _ in range(5)]
        unfinished = instance.add_run(
            DagsterRun(
                job_name="_tiny_job", run_id=str(uuid.uuid4()), status=DagsterRunStatus.STARTED
            )
        ).run_id
        old, new = [*runs[:3], unfinished], runs[3:]
        ages = {run_id: 100 for run_id in old} | {run_id: 10 for run_id in new}
        with instance.run_storage.connect() as conn:
            for run_id, days in ages.items():
                conn.execute(
                    RunsTable.update()
                    .where(RunsTable.c.run_id == run_id)
                    .values(create_timestamp=(now - timedelta(days=days)).replace(tzinfo=None))
                )
        assert all(instance.all_logs(run_id) for run_id in runs)

        pruned = prune_dagster_history(instance, days=90, batch_size=2, now=now)

        assert pruned.runs == 3 and pruned.batches == 2
        assert abs((now - pruned.cutoff) - timedelta(days=90)) < timedelta(seconds=1)
        left = {r.run_id for r in instance.get_runs()}
        assert left == {*new, unfinished}
        for run_id in runs[:3]:
            assert instance.get_run_by_id(run_id) is None and not instance.all_logs(run_id)
        assert all(instance.all_logs(run_id) for run_id in new)
        assert prune_dagster_history(instance, days=90, now=now).runs == 0
