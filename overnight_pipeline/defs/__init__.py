"""Dagster definitions: partitions, resources, assets and checks, jobs, schedules, sensors.
Thin over `steps` and `storage`."""

from __future__ import annotations

from dagster import (
    AssetSelection,
    Definitions,
    define_asset_job,
    in_process_executor,
)

from overnight_pipeline.alerts import Webhook
from overnight_pipeline.defs.assets import (
    GROUP,
    MARKETS,
    OVERNIGHT_ASSETS,
    ShardPlanIOManager,
)
from overnight_pipeline.defs.executors import overnight_executor
from overnight_pipeline.defs.loggers import LOGGERS
from overnight_pipeline.defs.readiness import build_readiness_sensor, readiness_checks
from overnight_pipeline.defs.recalculation import build_user_changes_sensor, recalculation_job
from overnight_pipeline.defs.resources import resources_from
from overnight_pipeline.defs.retention import build_retention
from overnight_pipeline.defs.schedules import market_schedules
from overnight_pipeline.defs.sensors import build_job_run_sensors
from overnight_pipeline.settings import Settings
from overnight_pipeline.telemetry import tracer_provider

OVERNIGHT_JOB = "overnight_job"


def build_definitions(settings: Settings, *, env_vars: bool = True) -> Definitions:
    """Everything Dagster loads, for the configured markets and settings."""
    readiness = readiness_checks(list(MARKETS.values()))
    webhook = Webhook(settings.alert_webhook_url) if settings.alert_webhook_url else None
    overnight_job = define_asset_job(
        OVERNIGHT_JOB,
        # Readiness is judged per market by its sensor, not inside every partition.
        selection=AssetSelection.groups(GROUP) - AssetSelection.checks(readiness),
        description="The overnight pre-computation of one market-date: rates, prices, "
        "fundamentals, scores and recommendations (sharded), and the Redis cache.",
        executor_def=overnight_executor(settings),
    )
    retention_job, retention_schedule = build_retention(
        batch_size=settings.retention_batch_size,
        dagster_history_days=settings.dagster_history_days,
    )
    return Definitions(
        assets=OVERNIGHT_ASSETS,
        asset_checks=[readiness],
        jobs=[overnight_job, retention_job, recalculation_job],
        schedules=[
            *market_schedules(MARKETS, OVERNIGHT_JOB, cron_override=settings.overnight_job_cron),
            retention_schedule,
        ],
        sensors=[
            *build_job_run_sensors(
                OVERNIGHT_JOB,
                asset_keys=[key for a in OVERNIGHT_ASSETS for key in a.keys],
                interval_seconds=settings.sensor_interval_seconds,
                tracer_provider=lambda: tracer_provider(settings),
                webhook=webhook,
                max_failed_user_ratio=settings.max_failed_user_ratio,
            ),
            build_readiness_sensor(list(MARKETS.values()), webhook=webhook),
            build_user_changes_sensor(interval_seconds=settings.sensor_interval_seconds),
        ],
        resources={
            **resources_from(settings, env_vars=env_vars),
            "shard_plan_io_manager": ShardPlanIOManager(),
        },
        # Asset jobs the UI builds (Materialize, asset backfills) run in one process.
        executor=in_process_executor,
        loggers=LOGGERS,
    )
