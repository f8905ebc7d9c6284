"""The retention job (BEHAVIOUR §4): every day, remove calculation events, their
asset index, their snapshots and job runs older than two years (PostgreSQL: drop their
monthly partitions and create the coming months'; SQLite: delete in bounded batches), and
Dagster's own runs and their event logs older than `DAGSTER_HISTORY_DAYS` (the audit tables
are the record; Dagster's history is for operating the last weeks).

An op job, not an asset: it produces no data, and as an asset it sat on the global lineage
page beside the overnight assets, so "Materialize all" there selected it too."""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    MetadataValue,
    OpExecutionContext,
    Output,
    RunsFilter,
    ScheduleDefinition,
    job,
    op,
)

from overnight_pipeline.defs.resources import AppDatabase, Retention
from overnight_pipeline.storage.retention import RETENTION_YEARS, delete_expired

RETENTION_JOB = "audit_retention_job"
# 03:00 UTC: after Tokyo's run (22:00 UTC) and before Europe's (05:00-06:00 UTC).
RETENTION_CRON = "0 3 * * *"
HISTORY_BATCH = 100  # Dagster runs deleted per round (each with its event log)
FINISHED = [DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED]


@dataclass(frozen=True)
class HistoryPruned:
    """What `prune_dagster_history` removed."""

    cutoff: datetime
    runs: int
    batches: int
    seconds: float


def prune_dagster_history(
    instance: DagsterInstance,
    *,
    days: int,
    batch_size: int = HISTORY_BATCH,
    now: datetime | None = None,
) -> HistoryPruned:
    """Delete the instance's finished runs created more than `days` ago, with their event
    logs (`instance.delete_run`), oldest first, `batch_size` at a time. Runs not finished
    (queued, started) are left whatever their age: run monitoring fails stuck ones first."""
    started = time.perf_counter()
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    deleted = batches = 0
    while True:
        records = instance.get_run_records(
            filters=RunsFilter(created_before=cutoff, statuses=FINISHED),
            limit=batch_size,
            order_by="create_timestamp",
            ascending=True,
        )
        if not records:
            break
        for record in records:
            instance.delete_run(record.dagster_run.run_id)
        deleted += len(records)
        batches += 1
    return HistoryPruned(cutoff, deleted, batches, time.perf_counter() - started)


@op(
    description="Deletes Dagster's finished runs older than the `retention` resource's "
    f"dagster_history_days (DAGSTER_HISTORY_DAYS) with their event logs, {HISTORY_BATCH} at "
    "a time."
)
def dagster_history(context: OpExecutionContext, retention: Retention) -> Output[None]:
    days = retention.dagster_history_days
    pruned = prune_dagster_history(context.instance, days=days)
    context.log.info(
        f"Dagster history before {pruned.cutoff.isoformat()}: {pruned.runs} runs deleted"
    )
    return Output(
        None,
        metadata={
            "cutoff": MetadataValue.timestamp(pruned.cutoff),
            "history_days": days,
            "runs_deleted": pruned.runs,
            "batches": pruned.batches,
            "seconds": round(pruned.seconds, 3),
        },
    )


@op(
    description="Removes calculation_events, calculation_assets, calculation_snapshots "
    f"and overnight_job_runs older than {RETENTION_YEARS} years: PostgreSQL drops their "
    "whole months and creates the coming ones; SQLite deletes the `retention` resource's "
    "batch_size rows (RETENTION_BATCH_SIZE) per transaction."
)
def audit_retention(
    context: OpExecutionContext, database: AppDatabase, retention: Retention
) -> Output[None]:
    batch_size = retention.batch_size
    report = delete_expired(database.engine, batch_size=batch_size)
    context.log.info(
        f"retention before {report.cutoff.isoformat()}: {report.deleted}; dropped"
        f" {report.dropped or 'no partition'}; created {report.created or 'no partition'}"
    )
    table = "\n".join(f"| {name} | {count:,} |" for name, count in report.deleted.items())
    return Output(
        None,
        metadata={
            "cutoff": MetadataValue.timestamp(report.cutoff),
            "deleted_total": report.total,
            **{f"deleted_{name}": count for name, count in report.deleted.items()},
            "batches": report.batches,
            "partitions_dropped": MetadataValue.json(report.dropped),
            "partitions_created": MetadataValue.json(report.created),
            "batch_size": batch_size,
            "seconds": round(report.seconds, 3),
            "summary": MetadataValue.md(f"| table | rows deleted |\n| --- | --- |\n{table}"),
        },
    )


@job(
    name=RETENTION_JOB,
    tags={"overnight/kind": "maintenance"},
    description="Audit retention: what is older than two years (whole months on PostgreSQL);"
    " Dagster's runs and event logs older than DAGSTER_HISTORY_DAYS.",
)
def audit_retention_job() -> None:
    audit_retention()
    dagster_history()


audit_retention_daily = ScheduleDefinition(
    name="audit_retention_daily",
    cron_schedule=RETENTION_CRON,
    execution_timezone="UTC",
    job=audit_retention_job,
    default_status=DefaultScheduleStatus.STOPPED,
    description="Daily audit retention at 03:00 UTC.",
)
