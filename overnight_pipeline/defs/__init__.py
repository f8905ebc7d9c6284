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

from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.defs.assets import GROUP, build_assets
from overnight_pipeline.defs.checks import cache_freshness_check
from overnight_pipeline.defs.partitions import market_date_partitions
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
    markets = load_markets(settings.markets_file)
    partitions = market_date_partitions(markets)
    assets = build_assets(
        partitions,
        markets,
        batch_size=settings.user_batch_size,
        retry_delay=settings.retry_delay_seconds,
        max_failed_user_ratio=settings.max_failed_user_ratio,
    )
    cache_asset = next(a for a in assets if a.key.to_user_string() == "recommendation_cache")
    freshness = cache_freshness_check(cache_asset)
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
        "fundamentals, scores, recommendations and the Redis cache.",
    )
    retention_job, retention_schedule = build_retention(batch_size=settings.retention_batch_size)
    return Definitions(
        assets=assets,
        asset_checks=[freshness],
        jobs=[overnight_job, retention_job, freshness_job],
        schedules=[
            *market_schedules(markets, overnight_job, cron_override=settings.overnight_job_cron),
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
            asset_keys=[a.key for a in assets],
            interval_seconds=settings.sensor_interval_seconds,
            tracer_provider=lambda: tracer_provider(settings),
        ),
        resources=resources_from(settings, env_vars=env_vars),
        # The steps are a chain and each one is already batched: one process per run costs
        # ~2 s per step less than the multiprocess executor (DAGSTER_NOTES).
        executor=in_process_executor,
    )
