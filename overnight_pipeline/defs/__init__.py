"""Dagster definitions: partitions, resources, assets and checks, jobs, schedules, sensors.
Thin over `steps` and `storage`."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    DefaultScheduleStatus,
    Definitions,
    ScheduleDefinition,
    define_asset_job,
    in_process_executor,
)

from overnight_pipeline.defs.assets import (
    GROUP,
    MARKETS,
    OVERNIGHT_ASSETS,
    ShardPlanIOManager,
    recommendation_cache,
)
from overnight_pipeline.defs.checks import cache_freshness_check
from overnight_pipeline.defs.executors import overnight_executor
from overnight_pipeline.defs.resources import resources_from
from overnight_pipeline.defs.retention import build_retention
from overnight_pipeline.defs.schedules import market_schedules
from overnight_pipeline.defs.sensors import build_job_run_sensors
from overnight_pipeline.settings import Settings
from overnight_pipeline.telemetry import tracer_provider

OVERNIGHT_JOB = "overnight_job"
FRESHNESS_JOB = "cache_freshness_job"


def build_definitions(settings: Settings, *, env_vars: bool = True) -> Definitions:
    """Everything Dagster loads, for the configured markets and settings."""
    freshness = cache_freshness_check(recommendation_cache)
    freshness_job = define_asset_job(
        FRESHNESS_JOB,
        selection=AssetSelection.checks(freshness),
        description="The recommendation cache's 24 h freshness check, alone.",
    )
    overnight_job = define_asset_job(
        OVERNIGHT_JOB,
        # The cache freshness check runs hourly on its own, not inside every partition.
        selection=AssetSelection.groups(GROUP) - AssetSelection.checks(freshness),
        description="The overnight pre-computation of one market-date: rates, prices, "
        "fundamentals, scores and recommendations (sharded), and the Redis cache.",
        executor_def=overnight_executor(settings),
    )
    retention_job, retention_schedule = build_retention(batch_size=settings.retention_batch_size)
    return Definitions(
        assets=OVERNIGHT_ASSETS,
        asset_checks=[freshness],
        jobs=[overnight_job, retention_job, freshness_job],
        schedules=[
            *market_schedules(MARKETS, OVERNIGHT_JOB, cron_override=settings.overnight_job_cron),
            retention_schedule,
            ScheduleDefinition(
                name="cache_freshness_hourly",
                cron_schedule="15 * * * *",
                execution_timezone="UTC",
                job=freshness_job,
                default_status=DefaultScheduleStatus.STOPPED,
                description="Evaluates the recommendation cache's freshness check every hour.",
            ),
        ],
        sensors=build_job_run_sensors(
            OVERNIGHT_JOB,
            asset_keys=[key for a in OVERNIGHT_ASSETS for key in a.keys],
            interval_seconds=settings.sensor_interval_seconds,
            tracer_provider=lambda: tracer_provider(settings),
        ),
        resources={
            **resources_from(settings, env_vars=env_vars),
            "shard_plan_io_manager": ShardPlanIOManager(),
        },
        # Asset jobs the UI builds (Materialize, asset backfills) run in one process.
        executor=in_process_executor,
    )
