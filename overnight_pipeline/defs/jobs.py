"""The overnight job: every asset of the overnight group for one market-date partition.

Its executor is Dagster's in-process, multiprocess or celery executor as the run config
says; the default is the deployment's (OVERNIGHT_EXECUTOR, USER_SHARDS, CELERY_BROKER_URL),
read when the definitions load. The recalculation and retention jobs live beside what they
run (`defs.recalculation`, `defs.retention`).
"""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job

from overnight_pipeline.defs.calculation import GROUP
from overnight_pipeline.defs.executors import overnight_executor
from overnight_pipeline.defs.readiness import market_readiness_checks
from overnight_pipeline.settings import get_settings

OVERNIGHT_JOB = "overnight_job"

overnight_job = define_asset_job(
    OVERNIGHT_JOB,
    # Readiness is judged per market by its sensor, not inside every partition.
    selection=AssetSelection.groups(GROUP) - AssetSelection.checks(market_readiness_checks),
    description="The overnight pre-computation of one market-date: rates, prices, "
    "fundamentals, scores and recommendations (sharded), and the Redis cache.",
    executor_def=overnight_executor(get_settings()),
)
