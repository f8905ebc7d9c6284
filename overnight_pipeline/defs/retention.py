"""The audit retention job (SPEC §4, AC-8.6.5): every day, remove calculation events, their
asset index, their snapshots and job runs older than two years (PostgreSQL: drop their
monthly partitions and create the coming months'; SQLite: delete in bounded batches).

An op job, not an asset: it produces no data, and as an asset it sat on the global lineage
page beside the overnight assets, so "Materialize all" there selected it too."""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

from dagster import (
    DefaultScheduleStatus,
    JobDefinition,
    MetadataValue,
    OpExecutionContext,
    Output,
    ScheduleDefinition,
    job,
    op,
)

from overnight_pipeline.defs.resources import AppDatabase
from overnight_pipeline.storage.retention import RETENTION_YEARS, delete_expired

RETENTION_JOB = "audit_retention_job"
# 03:00 UTC: after Tokyo's run (22:00 UTC) and before Europe's (05:00-06:00 UTC).
RETENTION_CRON = "0 3 * * *"


def build_retention(*, batch_size: int) -> tuple[JobDefinition, ScheduleDefinition]:
    """The retention job and its daily schedule (stopped until an operator starts it)."""

    @op(
        description=f"Removes calculation_events, calculation_assets, calculation_snapshots "
        f"and overnight_job_runs older than {RETENTION_YEARS} years: PostgreSQL drops their "
        f"whole months and creates the coming ones; SQLite deletes {batch_size:,} rows per "
        "transaction."
    )
    def audit_retention(context: OpExecutionContext, database: AppDatabase) -> Output[None]:
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
        description="Audit retention: what is older than two years (whole months on PostgreSQL).",
    )
    def audit_retention_job() -> None:
        audit_retention()

    schedule = ScheduleDefinition(
        name="audit_retention_daily",
        cron_schedule=RETENTION_CRON,
        execution_timezone="UTC",
        job=audit_retention_job,
        default_status=DefaultScheduleStatus.STOPPED,
        description="Daily audit retention at 03:00 UTC.",
    )
    return audit_retention_job, schedule
