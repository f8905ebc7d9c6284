"""`overnight run` and `overnight demo`: materialise market-date partitions in-process.

The same job and assets the schedules run, executed in this process against the Dagster
instance of `DAGSTER_HOME` when it is set (so the runs show in the UI), otherwise a local
instance under `.data/dagster`.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import redis
from dagster import AssetKey, BetaWarning, DagsterInstance

from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.defs import OVERNIGHT_JOB, build_definitions
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import Settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.overnight import partition_users

LOCAL_INSTANCE = Path(".data/dagster")
CACHE_ASSET = AssetKey("recommendation_cache")


@dataclass
class PartitionSummary:
    market: str
    day: date
    success: bool
    users: int = 0
    failed: int = 0
    recommendations: int = 0
    cache: str = "-"
    seconds: dict[str, float] = field(default_factory=dict)
    error: str | None = None

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def instance() -> DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    LOCAL_INSTANCE.mkdir(parents=True, exist_ok=True)
    return DagsterInstance.local_temp(tempdir=str(LOCAL_INSTANCE.resolve()))


def redis_reachable(url: str) -> bool:
    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except (redis.RedisError, OSError):
        return False


def run_partition(
    settings: Settings,
    market: str,
    day: date,
    *,
    dagster: DagsterInstance | None = None,
    with_cache: bool = True,
    log_level: str = "WARNING",
) -> PartitionSummary:
    """Materialise every overnight asset of `market|day` in this process."""
    with warnings.catch_warnings():
        # We opt into the beta single-run backfill policy on purpose (DAGSTER_NOTES).
        warnings.simplefilter("ignore", BetaWarning)
        defs = build_definitions(settings)
    job = defs.resolve_job_def(OVERNIGHT_JOB)
    selection = None
    if not with_cache:
        selection = [k for k in job.asset_layer.executable_asset_keys if k != CACHE_ASSET]
    started = time.perf_counter()
    dagster = dagster or instance()
    result = job.execute_in_process(
        instance=dagster,
        partition_key=partition_key(market, day),
        asset_selection=selection,
        raise_on_error=False,
        tags={"overnight/trigger": "cli"},
        run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
    )
    summary = PartitionSummary(market, day, result.success)
    meta: dict[str, dict[str, Any]] = {
        ev.asset_key.to_user_string(): {k: v.value for k, v in ev.materialization.metadata.items()}
        for ev in result.get_asset_materialization_events()
    }
    for name, values in meta.items():
        summary.seconds[name] = float(values.get("seconds", 0.0))
    scores = meta.get("asset_scores", {})
    recs = meta.get("recommendations", {})
    summary.users = int(scores.get("users_total", 0))
    summary.failed = int(scores.get("users_failed", 0)) + int(recs.get("users_failed", 0))
    summary.recommendations = int(recs.get("recommendations_generated", 0))
    if not with_cache:
        summary.cache = "skipped (Redis unreachable)"
    elif "recommendation_cache" in meta:
        cache = meta["recommendation_cache"]
        summary.cache = f"{cache.get('written', 0)} written, {cache.get('kept_newer', 0)} kept"
    if not result.success:
        failures = [ev for ev in result.all_events if ev.is_step_failure]
        summary.error = (
            "; ".join(
                f"{ev.step_key}: {ev.step_failure_data.error.message.strip() if ev.step_failure_data.error else 'failed'}"
                for ev in failures
            )
            or "run failed"
        )
    summary.seconds["total"] = time.perf_counter() - started
    _record_job_run(settings, dagster, result.run_id)
    return summary


def _record_job_run(settings: Settings, dagster: DagsterInstance, run_id: str) -> None:
    """Write the run's `overnight_job_runs` row (and span) now: no daemon watches an
    in-process run. Idempotent with the sensors, which upsert by run id."""
    from overnight_pipeline.defs.sensors import record_run_finished, record_run_started
    from overnight_pipeline.telemetry import tracer_provider

    run = dagster.get_run_by_id(run_id)
    if run is None:
        return
    engine = make_engine(settings.database_url)
    try:
        record_run_started(dagster, run, engine)
        record_run_finished(dagster, run, engine, tracer_provider=tracer_provider(settings))
    finally:
        engine.dispose()


def table(summaries: Sequence[PartitionSummary]) -> str:
    head = (f"{'partition':<18} {'users':>6} {'ok':>6} {'failed':>6} {'recs':>7} "
            f"{'scores s':>9} {'recs s':>7} {'total s':>8}  cache")  # fmt: skip
    lines = [head, "-" * len(head)]
    for s in summaries:
        ok = s.users - s.failed
        lines.append(
            f"{s.market + ' ' + s.day.isoformat():<18} {s.users:>6} {ok:>6} {s.failed:>6} "
            f"{s.recommendations:>7} {s.seconds.get('asset_scores', 0):>9.2f} "
            f"{s.seconds.get('recommendations', 0):>7.2f} {s.seconds['total']:>8.2f}  {s.cache}"
        )
        if s.error:
            lines.append(f"    failed: {s.error[:300]}")
    return "\n".join(lines)


def demo(settings: Settings, *, users: int = 1000, seed_value: int = 42) -> int:
    """Seed demo users, run today's partition of every market that has users, summarise."""
    from overnight_pipeline.seed import seed

    print(f"app database: {settings.database_url}")
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    markets = load_markets(settings.markets_file)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        report = seed(conn, users=users, seed=seed_value, as_of=now.date(), markets=tuple(
            markets.values()))  # fmt: skip
    print(f"seeded {report.users:,} demo users ({report.holdings:,} holdings)")
    with_cache = redis_reachable(settings.redis_url)
    print(f"redis at {settings.redis_url}: "
          f"{'reachable' if with_cache else 'unreachable, the cache step is skipped'}")  # fmt: skip
    dagster = instance()
    summaries = []
    for code, market in markets.items():
        day = now.astimezone(market.tz).date()
        with engine.connect() as conn:
            if not partition_users(conn, market=code, day=day, markets=markets):
                continue
        print(f"running {code} {day} ...", flush=True)
        summaries.append(run_partition(settings, code, day, dagster=dagster,
                                       with_cache=with_cache))  # fmt: skip
    engine.dispose()
    print()
    print(table(summaries))
    some_user = _a_user(settings)
    print(f"""
Next:
  Dagster UI:  make dev            then open http://127.0.0.1:3000 (assets, partitions, backfills)
  Dashboard:   .venv/bin/overnight serve   then open http://127.0.0.1:8000/
               token for a demo user: .venv/bin/overnight token {some_user}""")
    return 0 if all(s.success for s in summaries) else 1


def _a_user(settings: Settings) -> str:
    from sqlalchemy import select

    from overnight_pipeline.storage.models import recommendations_table

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            found = conn.scalar(select(recommendations_table.c.user_id).limit(1))
    finally:
        engine.dispose()
    return str(found) if found else "<user id>"
