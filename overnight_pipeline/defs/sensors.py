"""Run sensors that keep `overnight_job_runs` true for every run that materialises an
overnight asset, whatever launched it (BEHAVIOUR §4, §9): the schedules and job
backfills (`overnight_job`), asset backfills and the UI's Materialize (`__ASSET_JOB` with an
asset selection), `overnight run`. They also emit the run's `overnight-scoring-job` span
when it finishes (BEHAVIOUR §9), and a fifth sensor finds runs whose worker died (`kill -9`,
OOM) and marks them failed (`defs/monitor.py`).

One sensor per run status (started, success, failure, canceled), each a daemon tick that
records the run in the run ledger (`defs/run_ledger.py`: the row, from what the instance
knows about the run, `defs/run_facts.py`; its span, `defs/run_spans.py`).
"""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

from collections.abc import Collection, Iterable
from typing import Any

from dagster import (
    AssetKey,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from overnight_pipeline.defs.assets import OVERNIGHT_ASSETS
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.monitor import fail_dead_runs
from overnight_pipeline.defs.resources import Alerting, AppDatabase, Tracing
from overnight_pipeline.defs.run_ledger import (
    reconcile_unfinished,
    record_run_finished,
    record_run_started,
)
from overnight_pipeline.settings import get_settings

STARTED_SENSOR = "overnight_job_run_started"
SUCCEEDED_SENSOR = "overnight_job_run_succeeded"
FAILED_SENSOR = "overnight_job_run_failed"
CANCELED_SENSOR = "overnight_job_run_canceled"
WORKER_SENSOR = "overnight_run_worker_monitor"
ASSET_JOB = "__ASSET_JOB"


def materialises_overnight_assets(
    run: DagsterRun, job_name: str, asset_keys: Collection[AssetKey]
) -> bool:
    """Whether `run` materialises an overnight asset: a run of the overnight job, or any run
    (an asset backfill, the UI's Materialize) whose asset selection names one."""
    if run.job_name == job_name:
        return True
    if run.asset_selection is not None:
        return bool(set(run.asset_selection) & set(asset_keys))
    return run.job_name == ASSET_JOB and run.asset_check_selection is None


def _ours(run: DagsterRun) -> bool:
    return materialises_overnight_assets(run, OVERNIGHT_JOB, OVERNIGHT_ASSET_KEYS)


def _finish(
    context: RunStatusSensorContext,
    database: AppDatabase,
    alerting: Alerting,
    tracing: Tracing,
    error: str | None,
) -> None:
    """Record a finished run's row (and raise its alerts, emit its span), then the rows
    of runs whose own finishing tick was missed."""
    if not _ours(context.dagster_run):
        return
    try:
        provider = tracing.provider()
    except Exception as exc:  # a bad OTEL_* setting must not stop the record
        context.log.warning(f"no overnight-scoring-job span: {exc}")
        provider = None
    webhook = alerting.webhook()
    ratio = alerting.max_failed_user_ratio
    record_run_finished(
        context.instance,
        context.dagster_run,
        database.engine,
        run_error=error,
        tracer_provider=provider,
        webhook=webhook,
        max_failed_user_ratio=ratio,
    )
    reconcile_unfinished(
        context.instance,
        database.engine,
        tracer_provider=provider,
        webhook=webhook,
        max_failed_user_ratio=ratio,
    )


# The assets whose runs are recorded, and how often the daemon ticks (SENSOR_INTERVAL_SECONDS,
# a deployment's choice read when the definitions load).
OVERNIGHT_ASSET_KEYS = frozenset(key for a in OVERNIGHT_ASSETS for key in a.keys)
INTERVAL_SECONDS = get_settings().sensor_interval_seconds
_COMMON: dict[str, Any] = {
    # In-process runs (`overnight run`) carry no code-location origin: watch every run
    # of the instance and keep the overnight ones.
    "monitor_all_code_locations": True,
    "minimum_interval_seconds": INTERVAL_SECONDS,
    "default_status": DefaultSensorStatus.RUNNING,
}


@run_status_sensor(
    run_status=DagsterRunStatus.STARTED,
    name=STARTED_SENSOR,
    **_COMMON,
    description="Records each overnight run as `started` in overnight_job_runs.",
)
def overnight_job_run_started(context: RunStatusSensorContext, database: AppDatabase) -> None:
    if _ours(context.dagster_run):
        record_run_started(context.instance, context.dagster_run, database.engine)


@run_status_sensor(
    run_status=DagsterRunStatus.SUCCESS,
    name=SUCCEEDED_SENSOR,
    **_COMMON,
    description="Records a successful overnight run as `completed`, or "
    "`partial` when users failed or prices were missing.",
)
def overnight_job_run_succeeded(
    context: RunStatusSensorContext, database: AppDatabase, alerting: Alerting, tracing: Tracing
) -> None:
    _finish(context, database, alerting, tracing, None)


@run_failure_sensor(
    name=FAILED_SENSOR,
    **_COMMON,
    description="Records a failed overnight run as `failed`, or `partial` "
    "when only the cache step failed.",
)
def overnight_job_run_failed(
    context: RunFailureSensorContext, database: AppDatabase, alerting: Alerting, tracing: Tracing
) -> None:
    _finish(context, database, alerting, tracing, context.failure_event.message)


@run_status_sensor(
    run_status=DagsterRunStatus.CANCELED,
    name=CANCELED_SENSOR,
    **_COMMON,
    description="Records a canceled overnight run as `failed`.",
)
def overnight_job_run_canceled(
    context: RunStatusSensorContext, database: AppDatabase, alerting: Alerting, tracing: Tracing
) -> None:
    _finish(context, database, alerting, tracing, "run canceled")


@sensor(
    name=WORKER_SENSOR,
    minimum_interval_seconds=INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="Marks failed every started run whose worker process died (kill -9, "
    "OOM): the default run launcher has no worker health check, so Dagster "
    "would wait for the 6 h maximum runtime.",
)
def overnight_run_worker_monitor(
    context: SensorEvaluationContext, database: AppDatabase, alerting: Alerting
) -> SkipReason:
    dead = fail_dead_runs(context.instance)
    for run in dead:
        context.log.warning(f"run {run.run_id}: worker gone, marked failed")
        if _ours(run):
            record_run_finished(
                context.instance,
                run,
                database.engine,
                run_error="run worker died",
                webhook=alerting.webhook(),
                max_failed_user_ratio=alerting.max_failed_user_ratio,
            )
    return SkipReason(
        f"{len(dead)} dead run worker(s) marked failed"
        if dead
        else "every started run's worker is alive"
    )


def sensor_names() -> Iterable[str]:
    return (STARTED_SENSOR, SUCCEEDED_SENSOR, FAILED_SENSOR, CANCELED_SENSOR, WORKER_SENSOR)
