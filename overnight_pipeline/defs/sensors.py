"""Run sensors that keep `overnight_job_runs` true for every run that materialises an
overnight asset, whatever launched it (BEHAVIOUR §4, §9): the schedules and job
backfills (`overnight_job`), asset backfills and the UI's Materialize (`__ASSET_JOB` with an
asset selection), `overnight run`. They also emit the run's `overnight-scoring-job` span
when it finishes (BEHAVIOUR §9), and a fifth sensor finds runs whose worker died (`kill -9`,
OOM) and marks them failed (`defs/monitor.py`).

One sensor per run status (started, success, failure, canceled), each a daemon tick that
reads the run from the Dagster instance: its partition tags, the per-asset metadata of its
materializations, its check evaluations, step timings and failures. User counts come from
the event store by correlation id. Writes are upserts by run id: a tick evaluated twice, or
a started tick processed after the finished one, leaves the same row, and the span is
emitted only when the row first becomes finished.

A re-execution is a new run of the same run group: its row combines what the group's
earlier runs materialised for the partition (the steps it did not repeat) with what it did.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

import logging
import uuid
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunStatusSensorContext,
    SensorDefinition,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)
from opentelemetry.trace import TracerProvider
from sqlalchemy import Engine, select

from overnight_pipeline.alerts import Webhook, raise_alerts, run_alerts
from overnight_pipeline.core import audit
from overnight_pipeline.defs.assets import SCORES_AND_RECOMMENDATIONS
from overnight_pipeline.defs.monitor import fail_dead_runs
from overnight_pipeline.defs.partitions import (
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    split_key,
)
from overnight_pipeline.defs.resources import AppDatabase
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.models import overnight_job_runs_table
from overnight_pipeline.storage.overnight import correlation_id_for
from overnight_pipeline.telemetry import TRACER_NAME, StepSpan, emit_run_span

STARTED_SENSOR = "overnight_job_run_started"
SUCCEEDED_SENSOR = "overnight_job_run_succeeded"
FAILED_SENSOR = "overnight_job_run_failed"
CANCELED_SENSOR = "overnight_job_run_canceled"
WORKER_SENSOR = "overnight_run_worker_monitor"
ASSET_JOB = "__ASSET_JOB"
_log = logging.getLogger(__name__)
FINISHED_STATUSES = (DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
CACHE_STEP = "recommendation_cache"
"""The one step whose failure leaves a run `partial`: everything the dashboard needs is
already persisted in PostgreSQL before it (BEHAVIOUR §7, Redis down)."""


@dataclass(frozen=True)
class StepStat:
    run_id: str
    start: float | None
    end: float | None
    status: str | None
    attempts: int

    @property
    def ms(self) -> int:
        return (
            0 if self.start is None or self.end is None else round((self.end - self.start) * 1000)
        )


@dataclass
class RunFacts:
    """What the instance knows about a run (and the runs it re-executes)."""

    run: DagsterRun
    started_at: datetime
    ended_at: datetime | None
    partition_keys: list[str]
    assets: dict[str, dict[str, Any]] = field(default_factory=dict)
    checks: dict[str, dict[str, Any]] = field(default_factory=dict)
    steps: dict[str, StepStat] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    asset_steps: dict[str, str] = field(default_factory=dict)  # asset → step that made it

    @property
    def root_run_id(self) -> str:
        return self.run.root_run_id or self.run.run_id

    @property
    def correlation_ids(self) -> list[uuid.UUID]:
        keys = self.partition_keys or [""]
        return [correlation_id_for(f"{self.root_run_id}:{key}") for key in keys]

    def total(self, asset: str, name: str) -> Any:
        return self.assets.get(asset, {}).get(name, 0)

    def step_ms(self, *names: str) -> int:
        return sum(self.steps[n].ms for n in names if n in self.steps)

    def graph_ms(self, graph: str) -> int:
        """Wall time of a graph-backed asset's steps (its shards run side by side): from the
        first step's start to the last one's end."""
        stats = [s for n, s in self.steps.items() if n.startswith(f"{graph}.")]
        starts = [s.start for s in stats if s.start is not None]
        ends = [s.end for s in stats if s.end is not None]
        return round((max(ends) - min(starts)) * 1000) if starts and ends else 0


def _stamp(value: float | datetime | None) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value, UTC)


def partition_keys_of(run: DagsterRun) -> list[str]:
    """The run's partition keys: its partition tag, or each date of a single-market range
    (a single-run backfill); empty when the tags cannot tell."""
    tags = run.tags
    if PARTITION_TAG in tags:
        return [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if not (start and end):
        return []
    (market, first), (last_market, last) = split_key(start), split_key(end)
    if market != last_market:
        return []
    days = (last - first).days
    return [f"{first + timedelta(days=i)}|{market}" for i in range(days + 1)]


def _lineage(instance: DagsterInstance, run: DagsterRun) -> list[DagsterRun]:
    """The run and the runs it re-executes, oldest first."""
    chain = [run]
    while chain[-1].parent_run_id and len(chain) < 50:
        parent = instance.get_run_by_id(chain[-1].parent_run_id)
        if parent is None:
            break
        chain.append(parent)
    return chain[::-1]


def _plain(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str) else None


def _failure_text(data: Any) -> str:
    """The failure's own description, then each error of the chain ("Exceeded max_retries"
    wraps the error that was retried)."""
    parts: list[str] = []
    if data.user_failure_data is not None and data.user_failure_data.description:
        parts.append(data.user_failure_data.description)
    error, seen = data.error, 0
    while error is not None and seen < 5:
        message = error.message.strip()
        if message and not any(message in p for p in parts):
            parts.append(message)
        error, seen = error.cause or error.context, seen + 1
    return " <- ".join(parts)[:2000] or "step failed"


CRASH_PREFIXES = ("Run execution process for", "The run worker (pid")


def _crash_explanation(instance: DagsterInstance, run: DagsterRun) -> str | None:
    """Why a run failed from outside its execution: the code server's "Run execution process
    for … was terminated by signal 9 (SIGKILL)", or our worker monitor's message."""
    if run.status != DagsterRunStatus.FAILURE:
        return None
    kinds = {DagsterEventType.ENGINE_EVENT, DagsterEventType.RUN_FAILURE}
    for entry in reversed(list(instance.all_logs(run.run_id, of_type=kinds))):
        message = entry.dagster_event.message if entry.dagster_event else None
        # The code server's engine events read "[DagsterApiServer] Run execution process …".
        if message and any(prefix in message for prefix in CRASH_PREFIXES):
            return message
    return None


def run_facts(instance: DagsterInstance, run: DagsterRun) -> RunFacts:
    """Read `run` from the instance: timings, per-asset metadata totals, checks, failures."""
    record = instance.get_run_record_by_id(run.run_id)
    started = _stamp(record.start_time if record else None) or _stamp(
        record.create_timestamp if record else None
    )
    facts = RunFacts(
        run=run,
        started_at=started or datetime.now(UTC),
        ended_at=_stamp(record.end_time) if record else None,
        partition_keys=partition_keys_of(run),
    )
    # A step's materializations (one per partition of the run) carry the same totals over
    # the run's partitions: keep the newest run's per asset, and count the partitions.
    latest: dict[str, dict[str, Any]] = {}
    partitions: dict[str, set[str | None]] = {}
    kinds = {
        DagsterEventType.ASSET_MATERIALIZATION,
        DagsterEventType.ASSET_CHECK_EVALUATION,
        DagsterEventType.STEP_FAILURE,
    }
    for ancestor in _lineage(instance, run):
        for stat in instance.get_run_step_stats(ancestor.run_id):
            if stat.start_time is not None:
                facts.steps[stat.step_key] = StepStat(
                    ancestor.run_id,
                    stat.start_time,
                    stat.end_time,
                    stat.status.value if stat.status else None,
                    stat.attempts or 1,
                )
        for entry in instance.all_logs(ancestor.run_id, of_type=kinds):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                mat = event.step_materialization_data.materialization
                asset = mat.asset_key.to_user_string()
                latest[asset] = {
                    k: _plain(v.value)
                    for k, v in mat.metadata.items()
                    if k != "summary" and _plain(v.value) is not None
                }
                partitions.setdefault(asset, set()).add(mat.partition)
                if event.step_key:
                    facts.asset_steps[asset] = event.step_key
            elif event.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
                ev = event.asset_check_evaluation_data
                facts.checks[f"{ev.asset_key.to_user_string()}:{ev.check_name}"] = {
                    "passed": ev.passed,
                    "severity": ev.severity.value,
                }
            elif ancestor.run_id == run.run_id and event.step_key:
                facts.failures[event.step_key] = _failure_text(event.step_failure_data)
    for asset, values in latest.items():
        facts.assets[asset] = {**values, "partitions": len(partitions[asset])}
    if not facts.partition_keys:
        facts.partition_keys = sorted({p for keys in partitions.values() for p in keys if p})
    return facts


def _cache_warmed(facts: RunFacts) -> bool:
    cache = facts.assets.get(CACHE_STEP)
    return cache is not None and int(cache["partitions"]) >= max(len(facts.partition_keys), 1)


def _metrics(facts: RunFacts, counts: job_runs.CalculationCounts) -> dict[str, Any]:
    """The `metrics` document of a job-run row; the span takes its attributes from it."""
    end = facts.ended_at or datetime.now(UTC)
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
        "rates_stale": bool(facts.total("exchange_rates", "stale")),
        "prices_missing": facts.total("asset_prices", "missing"),
        "cache_written": facts.total("recommendation_cache", "written"),
        # Readiness needs the cache step done for every partition, whatever it wrote (a
        # partition without users writes nothing); False when it failed or was left out.
        "cache_warmed": _cache_warmed(facts),
        "cache_kept_newer": facts.total("recommendation_cache", "kept_newer"),
        "steps": {
            name: {"ms": s.ms, "status": s.status, "attempts": s.attempts, "run_id": s.run_id}
            for name, s in facts.steps.items()
        },
        "checks": facts.checks,
        "assets": facts.assets,
    }


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
        correlation_id=correlation_id_for(f"{root_run_id}:{(partition_keys or [''])[0]}"),
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
    run_error = _crash_explanation(instance, run) or run_error
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
    details: dict[str, Any] = {}
    if facts.failures:
        details["failed_steps"] = facts.failures
    if not succeeded:
        details["run_error"] = (run_error or f"run {run.status.value.lower()}")[:2000]
    if counts.failed:
        details["failed_users"] = counts.failed
        details["failed_users_sample"] = sample
    if metrics["prices_missing"]:
        details["prices_missing"] = metrics["prices_missing"]
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
            _emit_span(tracer_provider, facts, row, details)
        except Exception:  # telemetry must never cost the job-run record
            _log.exception("could not emit the overnight-scoring-job span of %s", run.run_id)
    if webhook is not None:
        # Every time, not only the first: the alert table keeps them to one per kind, and a
        # tick lost after the row was written must not lose the alert.
        raise_alerts(engine, webhook, run_alerts(row, max_failed_user_ratio=max_failed_user_ratio))
    return row


def _emit_span(
    provider: TracerProvider, facts: RunFacts, row: job_runs.JobRun, details: dict[str, Any]
) -> None:
    m = row.metrics
    attributes = {
        k: m[k]
        for k in (
            "fetch_rates_ms",
            "process_users_ms",
            "cache_warm_ms",
            "users_total",
            "users_success",
            "users_failed",
            "assets_scored",
            "recommendations_generated",
            "fetch_market_data_ms",
            "rates_stale",
            "prices_missing",
        )
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
    steps = []
    for name, stat in sorted(facts.steps.items(), key=lambda kv: kv[1].start or 0):
        if stat.run_id != facts.run.run_id or stat.start is None:
            continue  # steps of an earlier run of the group belong to that run's span
        steps.append(
            StepSpan(
                name=name,
                start=_stamp(stat.start) or facts.started_at,
                end=_stamp(stat.end) or facts.ended_at or datetime.now(UTC),
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
    emit_run_span(
        provider.get_tracer(TRACER_NAME),
        start=facts.started_at,
        end=facts.ended_at or datetime.now(UTC),
        attributes=attributes,
        error=error,
        steps=steps,
    )


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
    j = overnight_job_runs_table.c
    with engine.connect() as conn:
        run_ids = conn.scalars(
            select(j.run_id)
            .where(j.status == audit.STARTED, j.run_id.is_not(None))
            .order_by(j.started_at.desc())
            .limit(limit)
        ).all()
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


def materialises_overnight_assets(
    run: DagsterRun, job_name: str, asset_keys: Collection[AssetKey]
) -> bool:
    """Whether `run` materialises an overnight asset: a run of the overnight job, or any run
    (an asset backfill, the UI's Materialize) whose asset selection names one."""
    if run.job_name == job_name:
        return True
    if run.asset_selection is not None:
        return bool(set(run.asset_selection) & set(asset_keys))
    return run.job_name == ASSET_JOB and run.asset_check_selection is None


def build_job_run_sensors(
    job_name: str,
    *,
    asset_keys: Collection[AssetKey] = (),
    interval_seconds: int = 30,
    tracer_provider: Callable[[], TracerProvider | None] = lambda: None,
    webhook: Webhook | None = None,
    max_failed_user_ratio: float = 0.05,
) -> list[SensorDefinition]:
    """The four sensors for runs that materialise the overnight assets (`job_name`'s, or
    any run selecting one of `asset_keys`), wherever they were launched from (the UI, a
    schedule, a job or asset backfill, or `overnight run` against the same instance).
    With a `webhook`, a finished run's alerts are raised where its row is written."""
    alerting: dict[str, Any] = {"webhook": webhook, "max_failed_user_ratio": max_failed_user_ratio}

    def ours(run: DagsterRun) -> bool:
        return materialises_overnight_assets(run, job_name, asset_keys)

    common: dict[str, Any] = {
        # In-process runs (`overnight run`) carry no code-location origin: watch every run
        # of the instance and keep the overnight job's.
        "monitor_all_code_locations": True,
        "minimum_interval_seconds": interval_seconds,
        "default_status": DefaultSensorStatus.RUNNING,
    }

    def finish(context: RunStatusSensorContext, database: AppDatabase, error: str | None) -> None:
        if not ours(context.dagster_run):
            return
        try:
            provider = tracer_provider()
        except Exception as exc:  # a bad OTEL_* setting must not stop the record
            context.log.warning(f"no overnight-scoring-job span: {exc}")
            provider = None
        record_run_finished(
            context.instance,
            context.dagster_run,
            database.engine,
            run_error=error,
            tracer_provider=provider,
            **alerting,
        )
        reconcile_unfinished(
            context.instance, database.engine, tracer_provider=provider, **alerting
        )

    @run_status_sensor(
        run_status=DagsterRunStatus.STARTED,
        name=STARTED_SENSOR,
        **common,
        description="Records each overnight run as `started` in overnight_job_runs.",
    )
    def overnight_job_run_started(context: RunStatusSensorContext, database: AppDatabase) -> None:
        if ours(context.dagster_run):
            record_run_started(context.instance, context.dagster_run, database.engine)

    @run_status_sensor(
        run_status=DagsterRunStatus.SUCCESS,
        name=SUCCEEDED_SENSOR,
        **common,
        description="Records a successful overnight run as `completed`, or "
        "`partial` when users failed or prices were missing.",
    )
    def overnight_job_run_succeeded(context: RunStatusSensorContext, database: AppDatabase) -> None:
        finish(context, database, None)

    @run_failure_sensor(
        name=FAILED_SENSOR,
        **common,
        description="Records a failed overnight run as `failed`, or `partial` "
        "when only the cache step failed.",
    )
    def overnight_job_run_failed(context: RunFailureSensorContext, database: AppDatabase) -> None:
        finish(context, database, context.failure_event.message)

    @run_status_sensor(
        run_status=DagsterRunStatus.CANCELED,
        name=CANCELED_SENSOR,
        **common,
        description="Records a canceled overnight run as `failed`.",
    )
    def overnight_job_run_canceled(context: RunStatusSensorContext, database: AppDatabase) -> None:
        finish(context, database, "run canceled")

    @sensor(
        name=WORKER_SENSOR,
        minimum_interval_seconds=interval_seconds,
        default_status=DefaultSensorStatus.RUNNING,
        description="Marks failed every started run whose worker process died (kill -9, "
        "OOM): the default run launcher has no worker health check, so Dagster "
        "would wait for the 6 h maximum runtime.",
    )
    def overnight_run_worker_monitor(
        context: SensorEvaluationContext, database: AppDatabase
    ) -> SkipReason:
        dead = fail_dead_runs(context.instance)
        for run in dead:
            context.log.warning(f"run {run.run_id}: worker gone, marked failed")
            if ours(run):
                record_run_finished(
                    context.instance,
                    run,
                    database.engine,
                    run_error="run worker died",
                    **alerting,
                )
        return SkipReason(
            f"{len(dead)} dead run worker(s) marked failed"
            if dead
            else "every started run's worker is alive"
        )

    return [
        overnight_job_run_started,
        overnight_job_run_succeeded,
        overnight_job_run_failed,
        overnight_job_run_canceled,
        overnight_run_worker_monitor,
    ]


def sensor_names() -> Iterable[str]:
    return (STARTED_SENSOR, SUCCEEDED_SENSOR, FAILED_SENSOR, CANCELED_SENSOR, WORKER_SENSOR)
