"""The run ledger: one `overnight_job_runs` row per run that materialises an overnight asset,
kept true by the run sensors (`sensors`, BEHAVIOUR §4, §9) from what the instance knows
about the run (`run_facts`). User counts come from the event store by correlation id.
Writes are upserts by run id: a tick evaluated twice, or a started tick processed after the
finished one, leaves the same row, and the run's span (`run_spans`) is emitted only when
the row first becomes finished.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from dagster import DagsterInstance, DagsterRun, DagsterRunStatus
from opentelemetry.trace import TracerProvider
from sqlalchemy import Engine

from overnight_pipeline.alerts import Webhook, raise_alerts, run_alerts
from overnight_pipeline.core import audit
from overnight_pipeline.defs.calculation import SCORES_AND_RECOMMENDATIONS
from overnight_pipeline.defs.partitions import split_key
from overnight_pipeline.defs.run_facts import RunFacts, crash_explanation, run_facts
from overnight_pipeline.defs.run_spans import emit_span
from overnight_pipeline.steps.reports import CacheReport, PricesReport, RatesReport
from overnight_pipeline.storage import job_runs

# Named as when the ledger was part of the sensors module: the name is in the log lines.
_log = logging.getLogger("overnight_pipeline.defs.sensors")
FINISHED_STATUSES = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
CACHE_STEP = "recommendation_cache"
"""The one step whose failure leaves a run `partial`: everything the dashboard needs is
already persisted in PostgreSQL before it (BEHAVIOUR §7, Redis down)."""


def record_run_started(instance: DagsterInstance, run: DagsterRun, engine: Engine) -> bool:
    """The `started` row of `run` (nothing when it is already recorded)."""
    facts = run_facts(instance, run)
    row = started_row(run.run_id, facts.root_run_id, facts.partition_keys, facts.started_at)
    with engine.begin() as conn:
        return job_runs.record_started(conn, row)


def started_row(
    run_id: str, root_run_id: str, partition_keys: list[str], started_at: datetime
) -> job_runs.JobRun:
    """The `started` job-run row of a run: the one shape every writer of it uses (these
    sensors, and `overnight run` before its run exists in the instance)."""
    parsed = [split_key(k) for k in partition_keys]
    markets = {m for m, _ in parsed}
    return job_runs.JobRun(
        run_id=run_id,
        correlation_id=audit.run_correlation_id(root_run_id, (partition_keys or [""])[0]),
        started_at=started_at,
        market=markets.pop() if len(markets) == 1 else None,
        market_date=max((d for _, d in parsed), default=None),
        metrics={
            "dagster_run_id": run_id,
            "root_run_id": root_run_id,
            "partitions": partition_keys,
        },
    )


def record_run_finished(
    instance: DagsterInstance,
    run: DagsterRun,
    engine: Engine,
    *,
    run_error: str | None = None,
    tracer_provider: TracerProvider | None = None,
    webhook: Webhook | None = None,
    max_failed_user_ratio: float = 0.05,
) -> job_runs.JobRun:
    """Upsert the finished row of `run`; emit its span the first time it is finished; with
    a `webhook`, raise the alerts the row calls for (run failed, partial above the
    failed-user limit, replay mismatch: each once per market-date, never failing this)."""
    facts = run_facts(instance, run)
    run_error = crash_explanation(instance, run) or run_error
    with engine.connect() as conn:
        counts = job_runs.calculation_counts(conn, facts.correlation_ids)
        sample = job_runs.failed_users(conn, facts.correlation_ids) if counts.failed else []
    metrics = _metrics(facts, counts)
    succeeded = run.status == DagsterRunStatus.SUCCESS
    status = audit.decide_status(
        succeeded=succeeded,
        failed_steps=facts.failures,
        users_failed=counts.failed,
        prices_missing=int(metrics["prices_missing"] or 0),
        cache_step=CACHE_STEP,
    )
    if run.status == DagsterRunStatus.CANCELED:
        status = audit.FAILED
    details = _error_details(facts, counts, sample, metrics, run_error=run_error)
    row = replace(
        started_row(run.run_id, facts.root_run_id, facts.partition_keys, facts.started_at),
        status=status,
        completed_at=facts.ended_at or datetime.now(UTC),
        users_processed=counts.started,
        users_failed=counts.failed,
        error_details=details or None,
        metrics=metrics,
    )
    with engine.begin() as conn:
        first_time = job_runs.record_finished(conn, row)
    if first_time and tracer_provider is not None:
        try:
            emit_span(tracer_provider, facts, row, details)
        except Exception:  # telemetry must never cost the job-run record
            _log.exception("could not emit the overnight-scoring-job span of %s", run.run_id)
    if webhook is not None:
        # Every time, not only the first: the alert table keeps them to one per kind, and a
        # tick lost after the row was written must not lose the alert.
        raise_alerts(engine, webhook, run_alerts(row, max_failed_user_ratio=max_failed_user_ratio))
    return row


def reconcile_unfinished(
    instance: DagsterInstance,
    engine: Engine,
    *,
    limit: int = 20,
    tracer_provider: TracerProvider | None = None,
    webhook: Webhook | None = None,
    max_failed_user_ratio: float = 0.05,
) -> int:
    """Finish rows still `started` whose run has ended (a tick lost to an error: Dagster
    moves the sensor's cursor on regardless). Returns how many were fixed."""
    with engine.connect() as conn:
        run_ids = job_runs.unfinished_run_ids(conn, limit=limit)
    fixed = 0
    for run_id in run_ids:
        run = instance.get_run_by_id(run_id) if run_id else None
        if run is not None and run.status in FINISHED_STATUSES:
            record_run_finished(
                instance,
                run,
                engine,
                tracer_provider=tracer_provider,
                webhook=webhook,
                max_failed_user_ratio=max_failed_user_ratio,
            )
            fixed += 1
    return fixed


def _error_details(
    facts: RunFacts,
    counts: job_runs.CalculationCounts,
    sample: list[dict[str, str]],
    metrics: dict[str, Any],
    *,
    run_error: str | None,
) -> dict[str, Any]:
    """The row's `error_details`: failed steps, the run's error, failed users, missing
    prices; empty when there is nothing to say."""
    run = facts.run
    details: dict[str, Any] = {}
    if facts.failures:
        details["failed_steps"] = facts.failures
    if run.status != DagsterRunStatus.SUCCESS:
        details["run_error"] = (run_error or f"run {run.status.value.lower()}")[:2000]
    if counts.failed:
        details["failed_users"] = counts.failed
        details["failed_users_sample"] = sample
    if metrics["prices_missing"]:
        details["prices_missing"] = metrics["prices_missing"]
    return details


def _cache_warmed(facts: RunFacts) -> bool:
    cache = facts.assets.get(CACHE_STEP)
    return cache is not None and int(cache["partitions"]) >= max(len(facts.partition_keys), 1)


def _metrics(facts: RunFacts, counts: job_runs.CalculationCounts) -> dict[str, Any]:
    """The `metrics` document of a job-run row; the span takes its attributes from it."""
    end = facts.ended_at or datetime.now(UTC)
    rates = facts.report("exchange_rates", RatesReport)
    prices = facts.report("asset_prices", PricesReport)
    cache = facts.report(CACHE_STEP, CacheReport)
    return {
        "dagster_run_id": facts.run.run_id,
        "root_run_id": facts.root_run_id,
        "partitions": facts.partition_keys,
        "duration_ms": round((end - facts.started_at).total_seconds() * 1000),
        "fetch_rates_ms": facts.step_ms("exchange_rates"),
        "fetch_market_data_ms": facts.step_ms("asset_prices", "asset_fundamentals"),
        "process_users_ms": facts.graph_ms(SCORES_AND_RECOMMENDATIONS),
        "cache_warm_ms": facts.step_ms("recommendation_cache"),
        "users_total": counts.started,
        "users_success": counts.completed,
        "users_failed": counts.failed,
        "users_unfinished": counts.unfinished,
        # From the event store: exact when a step resumed (its metadata counts one attempt).
        "assets_scored": counts.holdings_scored,
        "recommendations_generated": counts.recommendations,
        "rates_stale": rates is not None and rates.stale,
        "prices_missing": prices.missing if prices else 0,
        "cache_written": cache.written if cache else 0,
        # Readiness needs the cache step done for every partition, whatever it wrote (a
        # partition without users writes nothing); False when it failed or was left out.
        "cache_warmed": _cache_warmed(facts),
        "cache_kept_newer": cache.kept_newer if cache else 0,
        "steps": {
            name: {"ms": s.ms, "status": s.status, "attempts": s.attempts, "run_id": s.run_id}
            for name, s in facts.steps.items()
        },
        "checks": facts.checks,
        "assets": facts.assets,
    }
