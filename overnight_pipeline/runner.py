"""`overnight run`, `overnight demo` and `overnight reexecute`: materialise market-date
partitions in-process.

The same job and assets the schedules run, executed in this process against the Dagster
instance of `DAGSTER_HOME` when it is set, otherwise the one under `.data/dagster-home`, the
home `make dev` serves: the demo's runs show in the UI. Each run's `overnight_job_runs` row
is written `started` before any work and finished after it (no daemon watches an in-process
run), and the run carries its worker's pid and host, so that a killed `overnight run` is
found and marked failed (`defs/monitor.py`) by the next command or by the daemon's sensor.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, Protocol

import redis
import yaml
from dagster import (
    AssetKey,
    DagsterEvent,
    DagsterInstance,
    DagsterRunStatus,
    ReexecutionOptions,
    build_reconstructable_job,
    execute_job,
)

from overnight_pipeline.core.markets import Market, load_markets
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.loggers import PROCESS_LOGGER
from overnight_pipeline.defs.monitor import fail_dead_runs, worker_tags
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import Settings
from overnight_pipeline.storage.batches import partition_users
from overnight_pipeline.storage.db import make_engine, migrate

LOCAL_HOME = Path(".data/dagster-home")
# Not in the repository root: Dagster's and dg's commands read ./dagster.yaml when
# DAGSTER_HOME is unset, and this one needs DAGSTER_PG_URL.
TEMPLATE = Path(__file__).resolve().parents[1] / "deploy" / "dagster.yaml"
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
    run_id: str | None = None

    @property
    def total_seconds(self) -> float:
        return sum(self.seconds.values())


def prepare_home(home: Path = LOCAL_HOME, template: Path = TEMPLATE) -> Path:
    """Write `home`'s dagster.yaml from the repository's deploy/dagster.yaml: its run queue,
    pools, monitoring, tick retention and log handler, with
    the PostgreSQL storage only when DAGSTER_PG_URL is set (otherwise SQLite files inside
    `home`, so the demo needs no server). `make demo` and `make dev` share this home."""
    home.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {}
    if template.exists():
        config = yaml.safe_load(template.read_text()) or {}
    if not os.environ.get("DAGSTER_PG_URL"):
        config.pop("storage", None)
    (home / "dagster.yaml").write_text(
        "# Written by `overnight` / `make dev` from the repository's deploy/dagster.yaml.\n"
        + yaml.safe_dump(config, sort_keys=False)
    )
    return home.resolve()


def instance() -> DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        return DagsterInstance.get()
    return DagsterInstance.from_config(str(prepare_home()))


def _job_run_recorders():  # type: ignore[no-untyped-def]
    # Imported late: the run ledger pulls in OpenTelemetry's SDK.
    from overnight_pipeline.defs.run_ledger import record_run_finished, record_run_started

    return record_run_started, record_run_finished


def fail_dead_local_runs(settings: Settings, dagster: DagsterInstance) -> list[str]:
    """Mark failed (run and job-run row) the runs of `dagster` whose worker on this host is
    gone: a killed `overnight run` when no daemon watches the instance."""
    dead = fail_dead_runs(dagster)
    if not dead:
        return []
    if dagster.event_log_storage.supports_global_concurrency_limits:
        # A killed provider step keeps its `market_data` pool slot; no daemon frees it here.
        for run in dead:
            dagster.event_log_storage.free_concurrency_slots_for_run(run.run_id)
    _, finished = _job_run_recorders()
    engine = make_engine(settings.database_url)
    try:
        for run in dead:
            finished(dagster, run, engine, run_error="run worker died")
    finally:
        engine.dispose()
    return [r.run_id for r in dead]


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
    log_level: str = "INFO",
) -> PartitionSummary:
    """Materialise every overnight asset of `market|day` in this process; its log goes to
    this process's logging (the `overnight` logger, `log_level` and up)."""
    defs = definitions_for(settings)
    job = defs.resolve_job_def(OVERNIGHT_JOB)
    selection = None
    if not with_cache:
        selection = [k for k in job.asset_layer.executable_asset_keys if k != CACHE_ASSET]
    started = time.perf_counter()
    dagster = dagster or instance()
    fail_dead_local_runs(settings, dagster)
    key = partition_key(market, day)
    run_id = str(uuid.uuid4())  # Dagster's run ids are uuid4 strings
    _record_started(settings, run_id, str(key))
    result = job.execute_in_process(
        instance=dagster,
        run_id=run_id,
        partition_key=key,
        asset_selection=selection,
        raise_on_error=False,
        tags={"overnight/trigger": "cli", **worker_tags()},
        run_config={"loggers": {PROCESS_LOGGER: {"config": {"log_level": log_level}}}},
    )
    summary = _summary(result, market, day, with_cache=with_cache)
    summary.run_id = result.run_id
    summary.seconds["total"] = time.perf_counter() - started
    _record_job_run(settings, dagster, result.run_id)
    return summary


class _Result(Protocol):
    """What `execute_in_process` and `execute_job` both return."""

    @property
    def success(self) -> bool: ...
    @property
    def all_events(self) -> Sequence[DagsterEvent]: ...
    def get_asset_materialization_events(self) -> Sequence[DagsterEvent]: ...


def _summary(
    result: _Result, market: str, day: date, *, with_cache: bool = True
) -> PartitionSummary:
    """A partition's line of the summary table, from the run's events."""
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
    # Both assets report the calculation's users (one pass computes them): count them once.
    summary.failed = int(recs.get("users_failed", scores.get("users_failed", 0)))
    summary.recommendations = int(recs.get("recommendations_generated", 0))
    if not with_cache:
        summary.cache = "skipped (Redis unreachable)"
    elif "recommendation_cache" in meta:
        cache = meta["recommendation_cache"]
        summary.cache = f"{cache.get('written', 0)} written, {cache.get('kept_newer', 0)} kept"
    if not result.success:
        failures = [ev for ev in result.all_events if ev.is_step_failure]
        summary.error = "; ".join(f"{ev.step_key}: {_failure_text(ev)}" for ev in failures)
        summary.error = summary.error or "run failed"
    return summary


def _failure_text(event: DagsterEvent) -> str:
    data = event.step_failure_data
    if data.user_failure_data is not None and data.user_failure_data.description:
        return data.user_failure_data.description.strip()
    return data.error.message.strip() if data.error else "failed"


def _record_started(settings: Settings, run_id: str, key: str) -> None:
    """The `started` row of a run about to execute in this process, written before any work
    so that a run killed mid-way is on record (the sensors upsert the same row by run id)."""
    from overnight_pipeline.defs.run_ledger import started_row
    from overnight_pipeline.storage import job_runs

    engine = make_engine(settings.database_url)
    try:
        with engine.begin() as conn:
            job_runs.record_started(conn, started_row(run_id, run_id, [key], datetime.now(UTC)))
    finally:
        engine.dispose()


def _record_job_run(settings: Settings, dagster: DagsterInstance, run_id: str) -> None:
    """Write the run's `overnight_job_runs` row (and span) now: no daemon watches an
    in-process run. Idempotent with the sensors, which upsert by run id."""
    from overnight_pipeline.telemetry import tracer_provider

    record_run_started, record_run_finished = _job_run_recorders()

    run = dagster.get_run_by_id(run_id)
    if run is None:
        return
    engine = make_engine(settings.database_url)
    try:
        record_run_started(dagster, run, engine)
        record_run_finished(dagster, run, engine, tracer_provider=tracer_provider(settings))
    finally:
        engine.dispose()


class ReexecuteError(Exception):
    """A run that cannot be re-executed from failure, with the reason."""


DEFINITIONS_MODULE = "overnight_pipeline.definitions"
REEXECUTABLE = (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)


def reexecute(
    settings: Settings, run_id: str, *, dagster: DagsterInstance | None = None
) -> PartitionSummary:
    """Re-execute `run_id` from failure in this process: the steps that did not succeed and
    what follows them, with the parent's tags (its partition) and the same calculation (the
    correlation id comes from the root run, so no event is written twice). A run whose worker
    died is marked failed first."""
    dagster = dagster or instance()
    fail_dead_local_runs(settings, dagster)
    parent = dagster.get_run_by_id(run_id)
    if parent is None:
        raise ReexecuteError(
            f"no run {run_id} in the Dagster instance"
            f" ({os.environ.get('DAGSTER_HOME') or LOCAL_HOME})"
        )
    if parent.status not in REEXECUTABLE:
        hint = " (still running? its worker is alive)" if not parent.is_finished else ""
        raise ReexecuteError(
            f"run {run_id} is {parent.status.value}{hint}: only a failed or "
            "canceled run is re-executed from failure"
        )
    keys = [parent.tags[k] for k in ("dagster/partition",) if k in parent.tags]
    market, day = (
        (keys[0].split("|")[1], date.fromisoformat(keys[0].split("|")[0]))
        if keys
        else ("?", date.min)
    )
    job = build_reconstructable_job(
        DEFINITIONS_MODULE,
        "job_named",
        (parent.job_name,),
        reconstructor_working_directory=os.getcwd(),
    )
    if parent.asset_selection is not None or parent.asset_check_selection is not None:
        # The UI's Materialize selects assets and their checks (the hourly cache check too):
        # the re-execution plans the same subset as its parent.
        job = job.get_subset(
            asset_selection=parent.asset_selection,
            asset_check_selection=parent.asset_check_selection,
        )
    tags = {k: v for k, v in parent.tags.items() if not k.startswith("overnight/worker_")}
    started = time.perf_counter()
    with execute_job(
        job,
        instance=dagster,
        raise_on_error=False,
        tags={**tags, **worker_tags()},
        reexecution_options=ReexecutionOptions.from_failure(run_id, dagster),
    ) as result:
        summary = _summary(result, market, day)
        new_run_id = result.run_id
    summary.seconds["total"] = time.perf_counter() - started
    _record_job_run(settings, dagster, new_run_id)
    summary.run_id = new_run_id
    return summary


def table(summaries: Sequence[PartitionSummary]) -> str:
    head = (
        f"{'partition':<18} {'users':>6} {'ok':>6} {'failed':>6} {'recs':>7} "
        f"{'scores+recs s':>13} {'total s':>8}  cache"
    )
    lines = [head, "-" * len(head)]
    for s in summaries:
        ok = s.users - s.failed
        lines.append(
            f"{s.market + ' ' + s.day.isoformat():<18} {s.users:>6} {ok:>6} {s.failed:>6} "
            f"{s.recommendations:>7} {s.seconds.get('recommendations', 0):>13.2f} "
            f"{s.seconds['total']:>8.2f}  {s.cache}"
        )
        if s.error:
            lines.append(f"    failed: {s.error[:300]}")
    return "\n".join(lines)


def clock() -> datetime:
    """Now, for `demo` (tests replace it to be on a weekend or a holiday)."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class DemoSession:
    """The partition `demo` runs for a market, and why that date."""

    market: str
    day: date
    why: str

    def __str__(self) -> str:
        return f"{self.market:<6} {self.day.isoformat()} ({self.why})"


def demo_sessions(markets: Mapping[str, Market], now: datetime) -> list[DemoSession]:
    """Each market's current or next session at `now` (what its schedule builds, never a day
    without a session), with the reason when it is not the market's local today."""
    from overnight_pipeline.core.readiness import current_or_next_session
    from overnight_pipeline.defs.schedules import closed_reason

    chosen = []
    for code, market in markets.items():
        today = now.astimezone(market.tz).date()
        try:
            day = current_or_next_session(market, now)
        except ValueError as exc:  # no session within a month: the calendar's range
            chosen.append(DemoSession(code, today, f"skipped: {exc}"))
            continue
        why = (
            "today"
            if day == today
            else f"next session: today ({today.isoformat()}) is {closed_reason(market, today)}"
        )
        chosen.append(DemoSession(code, day, why))
    return chosen


def demo(settings: Settings, *, users: int = 1000, seed_value: int = 42) -> int:
    """Seed demo users, run each market's current or next session (of the markets that have
    users), summarise."""
    from overnight_pipeline.seed import seed

    print(f"app database: {settings.database_url}")
    migrate(settings.database_url)
    engine = make_engine(settings.database_url)
    markets = load_markets(settings.markets_file)
    now = clock()
    with engine.begin() as conn:
        report = seed(
            conn, users=users, seed=seed_value, as_of=now.date(), markets=tuple(markets.values())
        )
    print(f"seeded {report.users:,} demo users ({report.holdings:,} holdings)")
    with_cache = redis_reachable(settings.redis_url)
    print(
        f"redis at {settings.redis_url}: "
        f"{'reachable' if with_cache else 'unreachable, the cache step is skipped'}"
    )
    dagster = instance()
    sessions = demo_sessions(markets, now)
    print("sessions (each market's current or next, as its schedule would build):")
    for session in sessions:
        print(f"  {session}")
    summaries = []
    for session in sessions:
        code, day = session.market, session.day
        if session.why.startswith("skipped"):
            continue
        with engine.connect() as conn:
            if not partition_users(conn, market=code, day=day, markets=markets):
                continue
        print(f"running {code} {day} ...", flush=True)
        summaries.append(run_partition(settings, code, day, dagster=dagster, with_cache=with_cache))
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
    from overnight_pipeline.storage.queries import a_recommended_user

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            found = a_recommended_user(conn)
    finally:
        engine.dispose()
    return str(found) if found else "<user id>"


if __name__ == "__main__":  # `python -m overnight_pipeline.runner`: what `make dev` runs
    print(prepare_home())


@dataclass
class RecalculationSummary:
    run_id: str
    success: bool
    metadata: dict[str, Any]
    error: str | None = None


def run_recalculation(
    settings: Settings,
    *,
    user: str | None = None,
    dagster: DagsterInstance | None = None,
    log_level: str = "INFO",
) -> RecalculationSummary:
    """`recalculation_job` in this process against the instance (the run shows in the UI,
    re-executable like the sensor's): every pending change, or `user` alone."""
    from overnight_pipeline.defs.recalculation import (
        RECALCULATION_JOB,
        RECALCULATION_OP,
        run_config,
    )

    defs = definitions_for(settings)
    job = defs.resolve_job_def(RECALCULATION_JOB)
    dagster = dagster or instance()
    config = run_config(user=user).to_config_dict()
    config["loggers"] = {PROCESS_LOGGER: {"config": {"log_level": log_level}}}
    result = job.execute_in_process(
        instance=dagster,
        raise_on_error=False,
        tags={"overnight/trigger": "cli", **worker_tags()},
        run_config=config,
    )
    metadata: dict[str, Any] = {}
    for event in result.all_events:
        if event.is_successful_output and event.step_key == RECALCULATION_OP:
            output = event.step_output_data.metadata or {}
            metadata = {k: getattr(v, "value", v) for k, v in output.items()}
    error = None
    if not result.success:
        failures = [e for e in result.all_events if e.is_step_failure]
        error = _failure_text(failures[-1]) if failures else "the run failed"
    return RecalculationSummary(result.run_id, result.success, metadata, error)
