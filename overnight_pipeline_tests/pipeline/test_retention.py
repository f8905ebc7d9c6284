"""Audit retention (SPEC §4, AC-8.6.5): exactly the rows older than two years go, in
bounded batches, never waiting on a row another transaction holds."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from dagster import DagsterInstance
from sqlalchemy import Engine, insert, select, text

from overnight_pipeline.defs import build_definitions
from overnight_pipeline.defs.retention import RETENTION_JOB
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    overnight_job_runs_table,
)
from overnight_pipeline.storage.retention import delete_expired, retention_cutoff
from overnight_pipeline_tests.conftest import create_pg_database, drop_pg_database

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
        for table in (calculation_events_table, calculation_assets_table, overnight_job_runs_table):
            conn.execute(table.delete())
    engine.dispose()


def seed_dated_rows(engine: Engine, stamps: list[datetime]) -> None:
    """One event, one calculation-asset row and one job run per timestamp."""
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
                )
            )
            conn.execute(
                insert(calculation_assets_table).values(
                    asset_id=uuid.uuid4(),
                    correlation_id=cid,
                    user_id=uuid.uuid4(),
                    score=1,
                    created_at=at,
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


def remaining(engine: Engine) -> dict[str, list[datetime]]:
    with engine.connect() as conn:
        return {
            "calculation_events": sorted(
                conn.scalars(select(calculation_events_table.c.created_at))
            ),
            "calculation_assets": sorted(
                conn.scalars(select(calculation_assets_table.c.created_at))
            ),
            "overnight_job_runs": sorted(
                conn.scalars(select(overnight_job_runs_table.c.started_at))
            ),
        }


def test_the_cutoff_is_two_calendar_years_before() -> None:
    assert retention_cutoff(NOW) == CUTOFF
    assert retention_cutoff(datetime(2028, 2, 29, 3, 0, tzinfo=UTC)) == datetime(
        2026, 2, 28, 3, 0, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        retention_cutoff(datetime(2026, 1, 1))


def test_exactly_the_rows_older_than_two_years_are_deleted_in_batches(engine: Engine) -> None:
    stamps = [CUTOFF + timedelta(seconds=s) for s in AGES]
    seed_dated_rows(engine, stamps)
    report = delete_expired(engine, now=NOW, batch_size=3)

    kept = [s for s in stamps if s >= CUTOFF]
    assert remaining(engine) == {name: kept for name in report.deleted}
    old = len(stamps) - len(kept)
    assert report.deleted == {
        "calculation_events": old,
        "calculation_assets": old,
        "overnight_job_runs": old,
    }
    assert report.cutoff == CUTOFF
    # Four old rows per table at three per transaction: 2 batches each.
    assert report.batches == 6
    # Nothing older is left: a second sweep deletes nothing.
    assert delete_expired(engine, now=NOW, batch_size=3).total == 0


def test_a_row_held_by_another_transaction_is_skipped_not_waited_for(engine: Engine) -> None:
    seed_dated_rows(engine, [CUTOFF - timedelta(days=d) for d in (1, 2, 3)])
    e = calculation_events_table.c
    with engine.connect() as holder:
        held = holder.execute(
            select(e.id).order_by(e.created_at).limit(1).with_for_update()
        ).scalar_one()
        started = time.monotonic()
        report = delete_expired(engine, now=NOW, batch_size=10)
        assert time.monotonic() - started < 4  # no lock wait (lock_timeout is 5 s)
        assert report.deleted["calculation_events"] == 2
        holder.rollback()
    with engine.connect() as conn:
        assert list(conn.scalars(select(e.id))) == [held]
    assert delete_expired(engine, now=NOW).deleted["calculation_events"] == 1


def test_the_retention_job_reports_what_it_deleted(db_url: str, engine: Engine) -> None:
    now = datetime.now(UTC)
    cutoff = retention_cutoff(now)
    seed_dated_rows(
        engine,
        [cutoff - timedelta(days=3), cutoff - timedelta(hours=1), cutoff + timedelta(days=1)],
    )
    settings = load_settings(database_url=db_url, retention_batch_size=1)
    defs = build_definitions(settings, env_vars=False)
    with DagsterInstance.ephemeral() as instance:
        result = defs.resolve_job_def(RETENTION_JOB).execute_in_process(instance=instance)
    assert result.success
    (event,) = [e for e in result.all_node_events if e.is_successful_output]
    meta = {k: v.value for k, v in event.step_output_data.metadata.items()}
    assert meta["deleted_total"] == 6
    assert meta["deleted_calculation_events"] == 2 and meta["deleted_overnight_job_runs"] == 2
    assert meta["batch_size"] == 1 and meta["batches"] == 9  # 2 rows + 1 empty batch, x 3
    assert abs(meta["cutoff"] - cutoff.timestamp()) < 60
    assert {len(v) for v in remaining(engine).values()} == {1}
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM calculation_events")).scalar() == 1


def test_retention_works_on_the_embedded_sqlite_database_too(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'demo.db'}"
    migrate(url)
    engine = make_engine(url)
    try:
        stamps = [CUTOFF + timedelta(seconds=s) for s in AGES]
        seed_dated_rows(engine, stamps)
        report = delete_expired(engine, now=NOW, batch_size=3)
        kept = [s for s in stamps if s >= CUTOFF]
        assert remaining(engine) == {name: kept for name in report.deleted}
    finally:
        engine.dispose()
