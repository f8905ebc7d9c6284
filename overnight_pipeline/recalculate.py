"""Same-day recalculation of the users whose inputs changed (BEHAVIOUR §5, issue 23), free of
Dagster: the `recalculation_job` op and `overnight recalculate` call `recalculate`.

`overnight load` records each user whose result-relevant inputs changed in `user_changes`.
A recalculation takes the pending changes (up to a change id), and for each user:

- active, with holdings in configured markets: computed again against the newest market
  data already stored for their home market (no provider call): the newest night among their
  markets' stored prices decides the home market (BEHAVIOUR §1), whose newest stored date is the
  market-date. A new calculation (this recalculation's correlation id, the four events), the
  recommendation row of that market-date replaced (unless a newer one is there), the cache
  rewritten (an entry is newer than the one it replaces);
- inactive, or holding nothing in a configured market: their cache entries are removed
  (the nightly run would not compute them either); their rows stay as the audit;
- home market with no stored market data yet: left to the night (counted as `waiting`).

Their changes are then marked processed; a change recorded meanwhile stays pending for the
next recalculation. A retried or re-executed recalculation (same correlation id) skips the
users whose `CALC_COMPLETED` is already written and rewrites the cache of all of them.
The nightly run remains the source of truth the next morning.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import redis
from sqlalchemy import Connection, Engine

from overnight_pipeline.core import audit
from overnight_pipeline.core.markets import Market, by_home, newest_home
from overnight_pipeline.steps.cache_warming import warm_cache
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.storage import changes, job_runs
from overnight_pipeline.storage.cache_invalidation import invalidate

JOB_TYPE = "recalculation"
"""`overnight_job_runs.job_type` of a recalculation (the nightly runs': "overnight")."""

_log = logging.getLogger(__name__)


class UnknownUserError(ValueError):
    def __init__(self, user_id: uuid.UUID) -> None:
        super().__init__(f"user: no user with id {user_id}")
        self.user_id = user_id


@dataclass(frozen=True)
class Plan:
    """Who is recalculated with which market-date, and who is not."""

    groups: dict[tuple[str, date], list[uuid.UUID]]
    dropped: list[uuid.UUID]  # inactive or no configured market: cache entries removed
    waiting: list[uuid.UUID]  # home market without stored market data: left to the night

    @property
    def users(self) -> list[uuid.UUID]:
        return sorted([u for g in self.groups.values() for u in g] + self.dropped + self.waiting)


def plan(conn: Connection, user_ids: Sequence[uuid.UUID], *, markets: Mapping[str, Market]) -> Plan:
    """Assign each of `user_ids` (existing users) to the market-date it is recalculated with."""
    active = changes.active_flags(conn, user_ids)
    held = changes.configured_markets(conn, [u for u in user_ids if active.get(u)], markets)
    newest = changes.newest_market_dates(conn, sorted({m for ms in held.values() for m in ms}))
    assigned: dict[uuid.UUID, tuple[str, date]] = {}
    dropped: list[uuid.UUID] = []
    waiting: list[uuid.UUID] = []
    for user_id in sorted(user_ids):
        codes = held.get(user_id)
        if not codes:
            dropped.append(user_id)
            continue
        home = newest_home(codes, newest, markets)
        if home is None:
            waiting.append(user_id)
            continue
        assigned[user_id] = home
    return Plan(by_home(assigned), dropped, waiting)


@dataclass
class RecalculationReport:
    """What a recalculation did (the op's metadata, the command's output)."""

    correlation_id: uuid.UUID
    up_to: int
    status: str = audit.COMPLETED
    groups: list[dict[str, Any]] = field(default_factory=list)
    computed: int = 0
    failed: int = 0
    dropped: int = 0
    waiting: int = 0
    cache_written: int = 0
    cache_kept_newer: int = 0
    cache_removed: int = 0
    changes_processed: int = 0
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def users(self) -> int:
        return self.computed + self.failed + self.dropped + self.waiting

    def metrics(self) -> dict[str, Any]:
        return {
            "up_to_change": self.up_to,
            "users": self.users,
            "users_computed": self.computed,
            "users_failed": self.failed,
            "users_dropped": self.dropped,
            "users_waiting": self.waiting,
            "cache_written": self.cache_written,
            "cache_kept_newer": self.cache_kept_newer,
            "cache_removed": self.cache_removed,
            "changes_processed": self.changes_processed,
            "market_dates": [f"{g['market']}|{g['day']}" for g in self.groups],
            "seconds": round(self.seconds, 3),
        }


def recalculate(
    engine: Engine,
    client: redis.Redis,
    *,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID,
    calculated_at: datetime,
    run_id: str,
    up_to: int | None = None,
    user_id: uuid.UUID | None = None,
    prefix: str = "",
    ttl_seconds: int = 86_400,
    batch_size: int = 1000,
    log: logging.Logger | None = None,
) -> RecalculationReport:
    """Recalculate the users with pending changes (id ≤ `up_to`, default: every pending
    change), or `user_id` alone whether or not it has one; record the recalculation in
    `overnight_job_runs` (job type `recalculation`), started then finished (`completed`,
    `partial` when a user failed, `failed` when it raised: then it re-raises).

    Raises `UnknownUserError` for a `user_id` that does not exist (nothing recorded)."""
    log = log or _log
    started = time.perf_counter()
    with engine.connect() as conn:
        if user_id is not None and not changes.active_flags(conn, [user_id]):
            raise UnknownUserError(user_id)
        pending = changes.pending(conn, user_id=user_id, up_to=up_to)
    users = [user_id] if user_id is not None else pending.user_ids
    last = pending.last_id if up_to is None else up_to
    report = RecalculationReport(correlation_id=correlation_id, up_to=last)
    row = job_runs.JobRun(
        run_id=run_id,
        correlation_id=correlation_id,
        started_at=datetime.now(UTC),
        job_type=JOB_TYPE,
        metrics={"up_to_change": last, "users": len(users)},
    )
    with engine.begin() as conn:
        job_runs.record_started(conn, row)
    try:
        _recalculate(
            engine,
            client,
            users,
            report,
            markets=markets,
            calculated_at=calculated_at,
            run_id=run_id,
            prefix=prefix,
            ttl_seconds=ttl_seconds,
            batch_size=batch_size,
            log=log,
        )
    except Exception as exc:
        report.status = audit.FAILED
        report.seconds = time.perf_counter() - started
        _finish(engine, row, report, error=f"{type(exc).__name__}: {exc}"[:2000])
        raise
    report.status = audit.PARTIAL if report.failed else audit.COMPLETED
    report.seconds = time.perf_counter() - started
    _finish(engine, row, report)
    log.info(
        "Recalculation finished: %s computed, %s failed, %s dropped, %s waiting in %.1f s",
        report.computed,
        report.failed,
        report.dropped,
        report.waiting,
        report.seconds,
        extra={"event": "recalculation_finished", **report.metrics()},
    )
    return report


def _recalculate(
    engine: Engine,
    client: redis.Redis,
    users: Sequence[uuid.UUID],
    report: RecalculationReport,
    *,
    markets: Mapping[str, Market],
    calculated_at: datetime,
    run_id: str,
    prefix: str,
    ttl_seconds: int,
    batch_size: int,
    log: logging.Logger,
) -> None:
    with engine.connect() as conn:
        chosen = plan(conn, users, markets=markets)
    cutoff = datetime.now(UTC)
    for (market, day), members in sorted(chosen.groups.items()):
        step = score_and_recommend(
            engine,
            market=market,
            day=day,
            markets=markets,
            correlation_id=report.correlation_id,
            calculated_at=calculated_at,
            run_id=run_id,
            batch_size=batch_size,
            log=log,
            only=members,
        )
        failed = {f["user"] for f in step.failures}
        report.failures.extend(step.failures)
        report.failed += len(failed)
        report.computed += len(members) - len(failed)
        cached = warm_cache(
            engine,
            client,
            day=day,
            correlation_id=report.correlation_id,
            prefix=prefix,
            ttl_seconds=ttl_seconds,
            batch_size=batch_size,
            only=[u for u in members if str(u) not in failed],
        )
        report.cache_written += cached.written
        report.cache_kept_newer += cached.kept_newer
        report.groups.append(
            {"market": market, "day": day.isoformat(), "users": len(members), "failed": len(failed)}
        )
    for gone in chosen.dropped:
        report.cache_removed += invalidate(
            client, gone, prefix=prefix, generated_before=cutoff
        ).removed
    report.dropped = len(chosen.dropped)
    report.waiting = len(chosen.waiting)
    with engine.begin() as conn:
        report.changes_processed = changes.mark_processed(
            conn, chosen.users, up_to=report.up_to, at=datetime.now(UTC)
        )


def _finish(
    engine: Engine, row: job_runs.JobRun, report: RecalculationReport, *, error: str | None = None
) -> None:
    days = [date.fromisoformat(g["day"]) for g in report.groups]
    market_codes = {g["market"] for g in report.groups}
    details: dict[str, Any] = {}
    if error:
        details["run_error"] = error
    if report.failed:
        details["failed_users"] = report.failed
        details["failed_users_sample"] = report.failures[:10]
    finished = job_runs.JobRun(
        run_id=row.run_id,
        correlation_id=row.correlation_id,
        started_at=row.started_at,
        status=report.status,
        market=market_codes.pop() if len(market_codes) == 1 else None,
        market_date=max(days, default=None),
        completed_at=datetime.now(UTC),
        users_processed=report.computed + report.failed,
        users_failed=report.failed,
        error_details=details or None,
        metrics=report.metrics(),
        job_type=JOB_TYPE,
    )
    try:
        with engine.begin() as conn:
            job_runs.record_finished(conn, finished)
    except Exception:  # the record must not hide the recalculation's own outcome
        if error is None:
            raise
        _log.exception("could not record the failed recalculation %s", row.run_id)
