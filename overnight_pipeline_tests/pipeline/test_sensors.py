"""The run sensors keep `overnight_job_runs` true (BEHAVIOUR §4, §9): invoked with
Dagster's sensor-context builders on real runs, and evaluated as daemon ticks."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    Definitions,
    ExecuteInProcessResult,
    SensorDefinition,
    build_run_status_sensor_context,
    build_sensor_context,
)
from sqlalchemy import Connection, delete, func, insert, select

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.defs.sensors import (
    CANCELED_SENSOR,
    STARTED_SENSOR,
    SUCCEEDED_SENSOR,
)
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.job_runs import job_run
from overnight_pipeline.storage.models import (
    calculation_events_table,
    overnight_job_runs_table,
    recommendations_table,
)
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline_tests.pipeline.conftest import BROKEN_USER, DAY, Pipeline, sensor_resources
from overnight_pipeline_tests.support.databases import REDIS_URL


def sensor(defs: Definitions, name: str) -> SensorDefinition:
    return defs.resolve_sensor_def(name)


def run_event(result: ExecuteInProcessResult, kind: DagsterEventType) -> DagsterEvent:
    return next(e for e in result.all_events if e.event_type == kind)


def invoke(
    pipeline: Pipeline, name: str, run: DagsterRun, event: DagsterEvent, instance=None
) -> None:
    """One sensor evaluation for `run`, as the daemon would do it for `event`."""
    with build_run_status_sensor_context(
        sensor_name=name,
        dagster_event=event,
        dagster_instance=instance or pipeline.instance,
        dagster_run=run,
        resources=sensor_resources(pipeline.settings),
    ) as context:
        sensor(pipeline.defs, name)(context)


def row(pipeline: Pipeline, run_id: str) -> dict[str, Any]:
    with pipeline.engine.connect() as conn:
        found = job_run(conn, run_id)
    assert found is not None, f"no overnight_job_runs row for {run_id}"
    return found


def test_a_run_is_recorded_started_then_completed(pipeline: Pipeline) -> None:
    result = pipeline.run("B3", DAY)
    assert result.success
    run = result.dagster_run
    invoke(pipeline, STARTED_SENSOR, run, run_event(result, DagsterEventType.RUN_START))
    started = row(pipeline, run.run_id)
    assert started["status"] == "started" and started["completed_at"] is None
    assert (started["market"], started["market_date"]) == ("B3", DAY)
    cid = correlation_id_for(f"{run.run_id}:{DAY.isoformat()}|B3")
    assert started["correlation_id"] == cid

    invoke(pipeline, SUCCEEDED_SENSOR, run, run_event(result, DagsterEventType.RUN_SUCCESS))
    done = row(pipeline, run.run_id)
    assert done["status"] == "completed"
    assert done["correlation_id"] == cid  # the id of the run's calculation events
    with pipeline.engine.connect() as conn:
        users = conn.scalar(
            select(func.count()).where(
                calculation_events_table.c.correlation_id == cid,
                calculation_events_table.c.event_type == "CALC_COMPLETED",
            )
        )
    assert users and done["users_processed"] == users and done["users_failed"] == 0
    assert done["error_details"] is None
    assert done["started_at"] <= done["completed_at"]
    m = done["metrics"]
    assert m["users_success"] == users and m["partitions"] == [f"{DAY}|B3"]
    assert m["assets_scored"] > 0 and m["recommendations_generated"] > 0
    assert m["cache_written"] == users and m["cache_warmed"] is True
    for timing in ("fetch_rates_ms", "process_users_ms", "cache_warm_ms", "duration_ms"):
        assert m[timing] > 0, timing
    assert set(m["steps"]) == {
        "exchange_rates",
        "asset_prices",
        "asset_fundamentals",
        "scores_and_recommendations.plan_shards",
        f"scores_and_recommendations.score_and_recommend_shard[B3_{DAY:%Y%m%d}_shard_0_of_1]",
        "scores_and_recommendations.collect_shards",
        "recommendation_cache",
    }
    assert m["checks"]["asset_scores:no_failed_users"] == {"passed": True, "severity": "WARN"}
    assert m["assets"]["asset_scores"]["users_total"] == users

    # A late started tick, and the finished tick evaluated twice, change nothing.
    invoke(pipeline, STARTED_SENSOR, run, run_event(result, DagsterEventType.RUN_START))
    invoke(pipeline, SUCCEEDED_SENSOR, run, run_event(result, DagsterEventType.RUN_SUCCESS))
    assert row(pipeline, run.run_id) == done
    with pipeline.engine.connect() as conn:
        j = overnight_job_runs_table.c
        assert conn.scalar(select(func.count()).where(j.run_id == run.run_id)) == 1


def test_a_finished_tick_before_the_started_tick_is_kept(pipeline: Pipeline) -> None:
    result = pipeline.run("XETRA", DAY)
    run = result.dagster_run
    invoke(pipeline, SUCCEEDED_SENSOR, run, run_event(result, DagsterEventType.RUN_SUCCESS))
    invoke(pipeline, STARTED_SENSOR, run, run_event(result, DagsterEventType.RUN_START))
    assert row(pipeline, run.run_id)["status"] == "completed"


def test_a_run_where_a_user_failed_is_partial_with_the_user_named(pipeline: Pipeline) -> None:
    result = pipeline.run("NYSE", DAY)
    assert result.success  # the broken user fails alone; the run is green
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    assert not checks[("asset_scores", "no_failed_users")].passed  # the WARN check is red
    assert checks[("asset_scores", "failed_users_within_limit")].passed
    invoke(
        pipeline,
        SUCCEEDED_SENSOR,
        result.dagster_run,
        run_event(result, DagsterEventType.RUN_SUCCESS),
    )
    recorded = row(pipeline, result.dagster_run.run_id)
    assert recorded["status"] == "partial"
    assert recorded["users_failed"] == 1 and recorded["users_processed"] > 1
    details = recorded["error_details"]
    assert details["failed_users"] == 1
    (failed,) = details["failed_users_sample"]
    assert failed["user"] == str(BROKEN_USER) and failed["stage"] == "inputs"
    assert "XTS" in failed["error"]


def test_too_many_failed_users_turn_the_error_check_red_and_block_nobody(
    pipeline: Pipeline, tmp_path: Path
) -> None:
    # Any failed user is too many: the ERROR check is red, yet the healthy users of the
    # partition still get their recommendations and cache entries (BEHAVIOUR §7).
    settings = pipeline.settings.model_copy(update={"max_failed_user_ratio": 0.0})
    defs = definitions_for(settings, env_vars=False)
    day = DAY - timedelta(days=3)  # Tuesday: a date no other test runs
    result = defs.resolve_job_def(OVERNIGHT_JOB).execute_in_process(
        instance=pipeline.instance, partition_key=partition_key("NYSE", day), raise_on_error=False
    )
    assert result.success
    checks = {
        (e.asset_key.to_user_string(), e.check_name): e
        for e in result.get_asset_check_evaluations()
    }
    limit = checks[("recommendations", "failed_users_within_limit")]
    assert not limit.passed and limit.severity.value == "ERROR"
    assert limit.description.startswith(f"{day}|NYSE: ")
    assert limit.metadata["partition"].value == f"{day}|NYSE"
    done = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"recommendations", "recommendation_cache"} <= done
    with pipeline.engine.connect() as conn:
        r = recommendations_table.c
        cid = correlation_id_for(f"{result.run_id}:{day}|NYSE")
        assert conn.scalar(select(func.count()).where(r.correlation_id == cid))

    pipeline = Pipeline(settings, pipeline.engine, pipeline.redis, defs, pipeline.instance)
    invoke(
        pipeline,
        SUCCEEDED_SENSOR,
        result.dagster_run,
        run_event(result, DagsterEventType.RUN_SUCCESS),
    )
    recorded = row(pipeline, result.run_id)
    assert recorded["status"] == "partial" and recorded["users_failed"] == 1
    checks_row = recorded["metrics"]["checks"]
    assert checks_row["asset_scores:failed_users_within_limit"] == {
        "passed": False,
        "severity": "ERROR",
    }


def test_a_canceled_run_is_recorded_failed(pipeline: Pipeline) -> None:
    job = pipeline.defs.resolve_job_def(OVERNIGHT_JOB)
    run = pipeline.instance.create_run_for_job(
        job,
        tags={
            "dagster/partition": f"{DAY}|LSE",
            "dagster/partition/market": "LSE",
            "dagster/partition/date": DAY.isoformat(),
        },
    )
    pipeline.instance.report_run_canceled(run)
    run = pipeline.instance.get_run_by_id(run.run_id)
    event = pipeline.instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_CANCELED)[0]
    invoke(pipeline, CANCELED_SENSOR, run, event.dagster_event)
    recorded = row(pipeline, run.run_id)
    assert recorded["status"] == "failed" and recorded["market"] == "LSE"
    assert recorded["error_details"]["run_error"] == "run canceled"
    assert recorded["users_processed"] == 0


def test_other_jobs_are_not_recorded(pipeline: Pipeline) -> None:
    job = pipeline.defs.resolve_job_def("audit_retention_job")
    result = job.execute_in_process(instance=pipeline.instance)
    invoke(
        pipeline,
        SUCCEEDED_SENSOR,
        result.dagster_run,
        run_event(result, DagsterEventType.RUN_SUCCESS),
    )
    with pipeline.engine.connect() as conn:
        assert job_run(conn, result.run_id) is None


# As the daemon evaluates them: the sensor's own cursor over the instance's run events.


@pytest.fixture
def persistent(tmp_path: Path) -> Iterator[DagsterInstance]:
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        yield instance


def tick(defs: Definitions, instance: DagsterInstance, name: str, cursor: str | None, url: str):
    with build_sensor_context(
        instance=instance,
        cursor=cursor,
        repository_def=defs.get_repository_def(),
        resources=sensor_resources(load_settings(database_url=url)),
    ) as context:
        return sensor(defs, name).evaluate_tick(context)


def test_daemon_ticks_record_every_run_and_a_repeated_tick_changes_nothing(
    pipeline_db: str, redis_prefix: str, persistent: DagsterInstance
) -> None:
    settings = load_settings(
        database_url=pipeline_db, redis_url=REDIS_URL, cache_prefix=redis_prefix, user_batch_size=40
    )
    defs = definitions_for(settings, env_vars=False)
    # First ticks only set each sensor's cursor (Dagster starts watching from "now").
    cursors = {
        n: tick(defs, persistent, n, None, pipeline_db).cursor
        for n in (STARTED_SENSOR, SUCCEEDED_SENSOR)
    }

    job = defs.resolve_job_def(OVERNIGHT_JOB)
    day = date(2026, 11, 20)
    run_ids = {
        job.execute_in_process(instance=persistent, partition_key=partition_key(m, day)).run_id
        for m in ("TSE", "XETRA")
    }
    engine = make_engine(pipeline_db)

    def rows() -> dict[str, dict[str, Any]]:
        with engine.connect() as conn:
            found = {r: job_run(conn, r) for r in run_ids}
        return {r: v for r, v in found.items() if v is not None}

    try:
        started = tick(defs, persistent, STARTED_SENSOR, cursors[STARTED_SENSOR], pipeline_db)
        assert {r["status"] for r in rows().values()} == {"started"} and len(rows()) == 2
        finished = tick(defs, persistent, SUCCEEDED_SENSOR, cursors[SUCCEEDED_SENSOR], pipeline_db)
        done = rows()
        assert {r["status"] for r in done.values()} == {"completed"}
        assert {(r["market"], r["market_date"]) for r in done.values()} == {
            ("TSE", day),
            ("XETRA", day),
        }
        # The same ticks again (a daemon that restarts before saving its cursor).
        tick(defs, persistent, STARTED_SENSOR, cursors[STARTED_SENSOR], pipeline_db)
        tick(defs, persistent, SUCCEEDED_SENSOR, cursors[SUCCEEDED_SENSOR], pipeline_db)
        assert rows() == done
        # The cursor moved past these runs: the next tick has nothing to do.
        assert started.cursor and finished.cursor
        again = tick(defs, persistent, SUCCEEDED_SENSOR, finished.cursor, pipeline_db)
        assert again.cursor == finished.cursor
    finally:
        with engine.begin() as conn:
            conn.execute(
                delete(overnight_job_runs_table).where(
                    overnight_job_runs_table.c.run_id.in_(run_ids)
                )
            )
        engine.dispose()


def test_a_lost_finished_tick_is_reconciled_by_the_next_one(pipeline: Pipeline) -> None:
    first = pipeline.run("NASDAQ", DAY)
    invoke(
        pipeline, STARTED_SENSOR, first.dagster_run, run_event(first, DagsterEventType.RUN_START)
    )
    # The finished tick of `first` is lost (an error in the tick moves the cursor on anyway);
    # the next run's finished tick repairs it.
    second = pipeline.run("NASDAQ", DAY - timedelta(days=1))
    invoke(
        pipeline,
        SUCCEEDED_SENSOR,
        second.dagster_run,
        run_event(second, DagsterEventType.RUN_SUCCESS),
    )
    assert row(pipeline, first.run_id)["status"] in ("completed", "partial")
    assert row(pipeline, second.run_id)["status"] in ("completed", "partial")
    assert uuid.UUID(str(row(pipeline, first.run_id)["correlation_id"]))


def test_a_range_run_is_one_row_listing_its_partitions(pipeline: Pipeline) -> None:
    # A run launched with range tags alone (the launchpad's "single run"): one market's dates.
    job = pipeline.defs.resolve_job_def(OVERNIGHT_JOB)
    result = job.execute_in_process(
        instance=pipeline.instance,
        tags={
            "dagster/asset_partition_range_start": "2026-11-09|B3",
            "dagster/asset_partition_range_end": "2026-11-11|B3",
        },
    )
    assert result.success
    invoke(
        pipeline,
        SUCCEEDED_SENSOR,
        result.dagster_run,
        run_event(result, DagsterEventType.RUN_SUCCESS),
    )
    recorded = row(pipeline, result.run_id)
    keys = ["2026-11-09|B3", "2026-11-10|B3", "2026-11-11|B3"]
    assert recorded["metrics"]["partitions"] == keys
    assert (recorded["market"], recorded["market_date"]) == ("B3", date(2026, 11, 11))
    assert recorded["correlation_id"] == correlation_id_for(f"{result.run_id}:{keys[0]}")
    e = calculation_events_table.c
    with pipeline.engine.connect() as conn:
        started = conn.scalar(
            select(func.count()).where(
                e.event_type == "CALC_STARTED",
                e.correlation_id.in_([correlation_id_for(f"{result.run_id}:{k}") for k in keys]),
            )
        )
    assert started and recorded["users_processed"] == started
    assert recorded["metrics"]["assets"]["asset_scores"]["partitions"] == 3


# The storage side alone, on PostgreSQL and on the demo's SQLite.


def test_job_run_upserts_and_counts_on_both_databases(db_conn: Connection) -> None:
    cid = uuid.uuid4()
    at = datetime(2026, 11, 27, 12, 30, tzinfo=UTC)
    e = calculation_events_table
    users = [uuid.uuid4() for _ in range(3)]
    events = [
        {
            "correlation_id": cid,
            "user_id": u,
            "event_type": "CALC_STARTED",
            "payload": {"holdings": 4},
            "created_at": at,
            "calculated_at": at,
        }
        for u in users[:2]
    ]
    events += [
        {
            "correlation_id": cid,
            "user_id": users[2],
            "event_type": "CALC_STARTED",
            "payload": {},
            "created_at": at,
            "calculated_at": at,
        },
        {
            "correlation_id": cid,
            "user_id": users[0],
            "event_type": "CALC_COMPLETED",
            "payload": {"status": "completed", "recommendations": 3},
            "created_at": at,
            "calculated_at": at,
        },
        {
            "correlation_id": cid,
            "user_id": users[2],
            "event_type": "CALC_COMPLETED",
            "payload": {"status": "failed", "stage": "inputs", "error": "no rate"},
            "created_at": at,
            "calculated_at": at,
        },
    ]
    ensure_months(db_conn, [at])
    db_conn.execute(insert(e), events)
    counts = job_runs.calculation_counts(db_conn, [cid])
    assert counts == job_runs.CalculationCounts(
        started=3, completed=1, failed=1, holdings_scored=8, recommendations=3
    )
    assert counts.unfinished == 1 and counts.failed_ratio == pytest.approx(1 / 3)
    assert job_runs.failed_users(db_conn, [cid]) == [
        {"user": str(users[2]), "stage": "inputs", "error": "no rate"}
    ]

    run_id = f"run-{uuid.uuid4()}"
    started = job_runs.JobRun(
        run_id=run_id,
        correlation_id=cid,
        started_at=at,
        market="NYSE",
        market_date=date(2026, 11, 27),
    )
    assert job_runs.record_started(db_conn, started)
    assert not job_runs.record_started(db_conn, started)  # a repeated started tick
    finished = replace(
        started,
        status="partial",
        completed_at=at + timedelta(minutes=3),
        users_processed=3,
        users_failed=1,
        metrics={"users_total": 3},
        error_details={"failed_users": 1},
    )
    assert job_runs.record_finished(db_conn, finished)  # first time finished: emit the span
    assert not job_runs.record_finished(db_conn, finished)  # a repeated finished tick
    assert not job_runs.record_started(db_conn, replace(started, started_at=at + timedelta(1)))
    recorded = job_runs.job_run(db_conn, run_id)
    assert recorded is not None
    assert (recorded["status"], recorded["users_failed"], recorded["started_at"]) == (
        "partial",
        1,
        at,
    )
    with pytest.raises(ValueError, match="not a finished status"):
        job_runs.record_finished(db_conn, started)
