"""The audit retention job (SPEC §4, AC-8.6.5): every day, delete calculation events, their
asset index and job runs older than two years, in bounded batches."""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    AssetSelection,
    DefaultScheduleStatus,
    MaterializeResult,
    MetadataValue,
    ScheduleDefinition,
    asset,
    define_asset_job,
)
from dagster._core.definitions.unresolved_asset_job_definition import (  # not public
    UnresolvedAssetJobDefinition,
)

from overnight_pipeline.defs.resources import AppDatabase
from overnight_pipeline.storage.retention import RETENTION_YEARS, delete_expired

RETENTION_JOB = "audit_retention_job"
# 03:00 UTC: after Tokyo's run (22:00 UTC) and before Europe's (05:00-06:00 UTC).
RETENTION_CRON = "0 3 * * *"


def build_retention(
    *, batch_size: int
) -> tuple[AssetsDefinition, UnresolvedAssetJobDefinition, ScheduleDefinition]:
    """The retention asset, its job and its daily schedule."""

    @asset(group_name="maintenance", kinds={"postgres"},
           description=f"Deletes calculation_events, calculation_assets and overnight_job_runs "
                       f"older than {RETENTION_YEARS} years, {batch_size:,} rows per "
                       "transaction.")  # fmt: skip
    def audit_retention(context: AssetExecutionContext, database: AppDatabase) -> MaterializeResult:
        report = delete_expired(database.engine, batch_size=batch_size)
        context.log.info(f"retention before {report.cutoff.isoformat()}: {report.deleted}")
        table = "\n".join(f"| {name} | {count:,} |" for name, count in report.deleted.items())
        return MaterializeResult(metadata={
            "cutoff": MetadataValue.timestamp(report.cutoff),
            "deleted_total": report.total,
            **{f"deleted_{name}": count for name, count in report.deleted.items()},
            "batches": report.batches,
            "batch_size": batch_size,
            "seconds": round(report.seconds, 3),
            "summary": MetadataValue.md(f"| table | rows deleted |\n| --- | --- |\n{table}"),
        })  # fmt: skip

    job = define_asset_job(
        RETENTION_JOB,
        selection=AssetSelection.assets(audit_retention),
        description="Audit retention: rows older than two years, in bounded batches.",
    )
    schedule = ScheduleDefinition(
        name="audit_retention_daily",
        cron_schedule=RETENTION_CRON,
        execution_timezone="UTC",
        job=job,
        default_status=DefaultScheduleStatus.RUNNING,
        description="Daily audit retention at 03:00 UTC.",
    )
    return audit_retention, job, schedule
