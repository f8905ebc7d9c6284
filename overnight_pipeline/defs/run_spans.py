"""The `overnight-scoring-job` span of a finished run (BEHAVIOUR §9): the run's figures as
attributes, one child span per step it ran, emitted once, when its job-run row first
becomes finished (`run_ledger`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from opentelemetry.trace import TracerProvider

from overnight_pipeline.core import audit
from overnight_pipeline.defs.run_facts import RunFacts, stamp
from overnight_pipeline.storage.job_runs import JobRun
from overnight_pipeline.telemetry import JOB_ATTRIBUTES, TRACER_NAME, StepSpan, emit_run_span


def emit_span(
    provider: TracerProvider, facts: RunFacts, row: JobRun, details: dict[str, Any]
) -> None:
    """The run's span; its error is the failed steps' (or the run's) when it failed."""
    m = row.metrics
    attributes = {
        k: m[k] for k in (*JOB_ATTRIBUTES, "fetch_market_data_ms", "rates_stale", "prices_missing")
    }
    attributes.update(
        {
            "overnight.status": row.status,
            "overnight.market": row.market,
            "overnight.market_date": row.market_date.isoformat() if row.market_date else None,
            "overnight.correlation_id": str(row.correlation_id),
            "overnight.partitions": ",".join(facts.partition_keys),
            "dagster.run_id": facts.run.run_id,
            "dagster.root_run_id": facts.root_run_id,
            "dagster.job": facts.run.job_name,
        }
    )
    error = None
    if row.status == audit.FAILED or facts.failures:
        error = "; ".join(f"{k}: {v.splitlines()[0][:300]}" for k, v in facts.failures.items())
        error = error or str(details.get("run_error", "run failed"))
    emit_run_span(
        provider.get_tracer(TRACER_NAME),
        start=facts.started_at,
        end=facts.ended_at or datetime.now(UTC),
        attributes=attributes,
        error=error,
        steps=_step_spans(facts),
    )


def _step_spans(facts: RunFacts) -> list[StepSpan]:
    """A span per step this run ran, with the metadata of the assets it materialised."""
    steps = []
    for name, stat in sorted(facts.steps.items(), key=lambda kv: kv[1].start or 0):
        if stat.run_id != facts.run.run_id or stat.start is None:
            continue  # steps of an earlier run of the group belong to that run's span
        steps.append(
            StepSpan(
                name=name,
                start=stamp(stat.start) or facts.started_at,
                end=stamp(stat.end) or facts.ended_at or datetime.now(UTC),
                ok=name not in facts.failures,
                attributes={
                    "dagster.step": name,
                    "dagster.attempts": stat.attempts,
                    **{
                        f"overnight.{k}": v
                        for asset, step in facts.asset_steps.items()
                        if step == name
                        for k, v in facts.assets.get(asset, {}).items()
                    },
                },
            )
        )
    return steps
