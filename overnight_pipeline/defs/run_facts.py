"""What the Dagster instance knows about a run (and the runs it re-executes): its partition
keys, the per-asset metadata of its materializations, its check evaluations, step timings
and failures, and why it failed when its process died. The run ledger (`run_ledger`) and
the run's span (`run_spans`) are made from it.

A re-execution is a new run of the same run group: its facts combine what the group's
earlier runs materialised for the partition (the steps it did not repeat) with what it did.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from dagster import DagsterEventType, DagsterInstance, DagsterRun, DagsterRunStatus

from overnight_pipeline.core.audit import run_correlation_id
from overnight_pipeline.defs.partitions import (
    PARTITION_TAG,
    RANGE_END_TAG,
    RANGE_START_TAG,
    split_key,
)
from overnight_pipeline.steps.reports import ReportT


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
        return [run_correlation_id(self.root_run_id, key) for key in keys]

    def report(self, asset: str, kind: type[ReportT]) -> ReportT | None:
        """The step report of `asset` read back from its materialization metadata (the
        run's newest), or None when the run and its group did not materialise it; metadata
        without one of the report's measures raises `MetadataError`."""
        metadata = self.assets.get(asset)
        return None if metadata is None else kind.from_metadata(metadata)

    def step_ms(self, *names: str) -> int:
        return sum(self.steps[n].ms for n in names if n in self.steps)

    def graph_ms(self, graph: str) -> int:
        """Wall time of a graph-backed asset's steps (its shards run side by side): from the
        first step's start to the last one's end."""
        stats = [s for n, s in self.steps.items() if n.startswith(f"{graph}.")]
        starts = [s.start for s in stats if s.start is not None]
        ends = [s.end for s in stats if s.end is not None]
        return round((max(ends) - min(starts)) * 1000) if starts and ends else 0


def stamp(value: float | datetime | None) -> datetime | None:
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


def crash_explanation(instance: DagsterInstance, run: DagsterRun) -> str | None:
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
    started = stamp(record.start_time if record else None) or stamp(
        record.create_timestamp if record else None
    )
    facts = RunFacts(
        run=run,
        started_at=started or datetime.now(UTC),
        ended_at=stamp(record.end_time) if record else None,
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
