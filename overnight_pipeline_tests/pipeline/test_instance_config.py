"""The instance configuration in deploy/dagster.yaml (issue 22 item 6): Dagster's and dg's
commands work in the repository root without DAGSTER_HOME, and the file's blocks are what
Dagster reads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import DagsterInstance
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.config import PoolGranularity
from dagster._core.scheduler.instigation import TickStatus

from overnight_pipeline.defs.assets import asset_fundamentals, asset_prices, exchange_rates
from overnight_pipeline.defs.calculation import MARKET_DATA_POOL
from overnight_pipeline.runner import TEMPLATE, prepare_home

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def test_the_instance_config_is_not_in_the_repository_root() -> None:
    # Dagster's CLI reads ./dagster.yaml when DAGSTER_HOME is unset; this one needs
    # DAGSTER_PG_URL, so it lives in deploy/ and is copied into a home.
    assert not (REPO / "dagster.yaml").exists()
    assert TEMPLATE == REPO / "deploy" / "dagster.yaml" and TEMPLATE.exists()


def test_dg_check_defs_works_in_the_repository_root_without_dagster_home() -> None:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DAGSTER_", "OTEL_", "VIRTUAL_ENV"))
    }
    done = subprocess.run(
        [str(BIN / "dg"), "check", "defs"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr
    assert "DAGSTER_PG_URL" not in done.stdout + done.stderr


@pytest.fixture
def instance(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    with DagsterInstance.from_config(str(prepare_home(tmp_path / "home"))) as found:
        yield found


def test_schedule_and_sensor_ticks_are_purged(instance: DagsterInstance) -> None:
    # Dagster keeps ticks forever by default (skipped sensor ticks: 7 days).
    sensor = instance.get_tick_retention_settings(InstigatorType.SENSOR)
    assert sensor[TickStatus.SKIPPED] == 3
    assert sensor[TickStatus.SUCCESS] == sensor[TickStatus.FAILURE] == 30
    schedule = instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
    assert schedule[TickStatus.SKIPPED] == 30
    assert schedule[TickStatus.SUCCESS] == schedule[TickStatus.FAILURE] == 90


def test_the_provider_steps_share_the_market_data_pool(instance: DagsterInstance) -> None:
    pools = instance.get_concurrency_config().pool_config
    assert pools.default_pool_limit == 1 and pools.pool_granularity == PoolGranularity.OP
    for asset in (exchange_rates, asset_prices, asset_fundamentals):
        assert asset.op.pool == MARKET_DATA_POOL, asset.key
    assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 120
