"""Same-day recalculation in Dagster (BEHAVIOUR §5, issue 23): `recalculation_job` recalculates
the users with pending changes (`overnight_pipeline.recalculate`), and the
`user_changes_sensor` launches it when `overnight load` has recorded some.

An op job, not an asset materialisation: it rewrites a few users' rows of an already
materialised partition, which is not a partition's materialisation (the nightly run stays
the source of truth of `recommendations` the next morning). Its runs show in the UI under
the job, are retried (`DB_RETRIES`) and re-executable from failure like the nightly ones: the
correlation id comes from the root run, so a re-execution resumes after the users whose
events are written. One run at a time: the sensor waits while one is queued or running,
then takes every change recorded meanwhile in one run (a burst of changes is one run).
"""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

import time
from datetime import UTC, datetime

from dagster import (
    Config,
    DagsterRunStatus,
    DefaultSensorStatus,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunConfig,
    RunRequest,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    job,
    op,
    sensor,
)
from pydantic import Field

from overnight_pipeline.core.audit import run_correlation_id
from overnight_pipeline.defs.partitions import MARKETS
from overnight_pipeline.defs.resources import AppDatabase, CacheRedis, OvernightTuning
from overnight_pipeline.defs.retries import DB_RETRIES, retried
from overnight_pipeline.recalculate import recalculate
from overnight_pipeline.settings import get_settings
from overnight_pipeline.storage import changes

RECALCULATION_JOB = "recalculation_job"
RECALCULATION_OP = "recalculate_changed_users"
SENSOR = "user_changes_sensor"
KIND_TAG = "overnight/kind"
UP_TO_TAG = "overnight/up_to_change"
RELAUNCH_AFTER_SECONDS = 60.0
MAX_RELAUNCHES = 5
GAVE_UP = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
IN_FLIGHT = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
]


class RecalculationConfig(Config):
    up_to_change: int | None = Field(
        default=None,
        ge=0,
        description="Recalculate the changes with id ≤ this (the sensor sets it); "
        "empty: every pending change.",
    )
    user: str | None = Field(
        default=None, description="Recalculate this user id alone, changed or not."
    )


def run_config(up_to: int | None = None, user: str | None = None) -> RunConfig:
    return RunConfig(ops={RECALCULATION_OP: RecalculationConfig(up_to_change=up_to, user=user)})


@op(
    name=RECALCULATION_OP,
    description="Scores, recommendations, events, the recommendation row and the cache of the "
    "users whose inputs changed, against the newest market data stored for their home market.",
)
@retried(DB_RETRIES)
def recalculate_changed_users(
    context: OpExecutionContext,
    config: RecalculationConfig,
    database: AppDatabase,
    cache: CacheRedis,
    tuning: OvernightTuning,
) -> Output[None]:
    import uuid

    root = context.run.root_run_id or context.run.run_id
    record = context.instance.get_run_record_by_id(root)
    created = record.create_timestamp if record else datetime.now(UTC)
    client = cache.client()
    try:
        report = recalculate(
            database.engine,
            client,
            markets=MARKETS,
            correlation_id=run_correlation_id(root, "recalculation"),
            calculated_at=created.astimezone(UTC),
            run_id=context.run.run_id,
            up_to=config.up_to_change,
            user_id=uuid.UUID(config.user) if config.user else None,
            prefix=cache.prefix,
            batch_size=tuning.batch_size,
            log=context.log,  # type: ignore[arg-type]
        )
    finally:
        client.close()
    metrics = report.metrics()
    return Output(
        None,
        metadata={
            **{k: v for k, v in metrics.items() if k != "market_dates"},
            "status": report.status,
            "correlation_id": str(report.correlation_id),
            "market_dates": MetadataValue.json(metrics["market_dates"]),
        },
    )


@job(
    name=RECALCULATION_JOB,
    tags={KIND_TAG: "recalculation"},
    description="Same-day recalculation of the users whose inputs changed (overnight load), "
    "launched by the user_changes_sensor; `overnight recalculate` runs it in process.",
)
def recalculation_job() -> None:
    recalculate_changed_users()


def pending_changes_request(
    context: SensorEvaluationContext,
    database: AppDatabase,
    *,
    relaunch_after_seconds: float = RELAUNCH_AFTER_SECONDS,
    max_relaunches: int = MAX_RELAUNCHES,
) -> RunRequest | SkipReason:
    """What `user_changes_sensor` decides: one run at a time, keyed by the newest change id
    it covers (a tick that sees the same changes launches nothing). A run that failed (its
    retries spent) is launched again for the same changes `relaunch_after_seconds` after it
    ended, doubling after each failure, at most `max_relaunches` times; then the changes
    wait for a new change, a re-execution from the UI or the night."""
    busy = context.instance.get_run_records(
        filters=RunsFilter(job_name=RECALCULATION_JOB, statuses=IN_FLIGHT), limit=1
    )
    if busy:
        return SkipReason(f"run {busy[0].dagster_run.run_id} is recalculating")
    with database.engine.connect() as conn:
        waiting = changes.pending(conn)
    if not waiting:
        return SkipReason("no pending change")
    key = f"user-changes:{waiting.last_id}"
    tried = context.instance.get_run_records(
        filters=RunsFilter(job_name=RECALCULATION_JOB, tags={UP_TO_TAG: str(waiting.last_id)}),
        limit=max_relaunches + 2,
    )
    failed = [r for r in tried if r.dagster_run.status in GAVE_UP]
    if failed and len(failed) == len(tried):  # every run for these changes failed
        if len(failed) > max_relaunches:
            return SkipReason(
                f"{len(failed)} runs for the changes up to {waiting.last_id} failed: "
                "re-execute the last one, or the next change or the night takes them"
            )
        wait = relaunch_after_seconds * 2 ** (len(failed) - 1)
        ended = failed[0].end_time or failed[0].update_timestamp.timestamp()
        if time.time() < ended + wait:
            return SkipReason(
                f"run {failed[0].dagster_run.run_id} failed; launching again"
                f" {ended + wait - time.time():.0f} s from now"
            )
        key = f"{key}:relaunch-{len(failed)}"
    return RunRequest(
        run_key=key,
        run_config=run_config(waiting.last_id),
        tags={UP_TO_TAG: str(waiting.last_id), "overnight/users": str(len(waiting.user_ids))},
    )


@sensor(
    name=SENSOR,
    # By name: a job object here is rebuilt with the resources, and that path warns
    # (BetaWarning on `owners`) in this Dagster version.
    job_name=RECALCULATION_JOB,
    minimum_interval_seconds=get_settings().sensor_interval_seconds,
    default_status=DefaultSensorStatus.RUNNING,
    description="Launches the recalculation of the users whose inputs changed "
    "(user_changes), one run at a time, every change recorded meanwhile in the next.",
)
def user_changes_sensor(
    context: SensorEvaluationContext, database: AppDatabase
) -> RunRequest | SkipReason:
    return pending_changes_request(context, database)
