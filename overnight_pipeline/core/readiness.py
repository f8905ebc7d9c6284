"""Readiness of each market's session: were its recommendations computed and cached before
the market opened? (The product's one promise; BEHAVIOUR §9.)

A market's partition for session D is *ready* when a run of it finished (completed or
partial, the cache written) before the market's open on D. This module classifies one
market-date from the facts of its runs and the time now; it reads no database and knows no
Dagster, so the sensor, `overnight status` and the metrics all judge the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from overnight_pipeline.core.markets import Market, is_session, session_open_utc

READY = "ready"
READY_PARTIAL = "ready-partial"
LATE = "late"
FAILED = "failed"
MISSING = "missing"
RUNNING = "running"
PENDING = "pending"
NO_SESSION = "no-session"
STATES = (READY, READY_PARTIAL, LATE, FAILED, MISSING, RUNNING, PENDING, NO_SESSION)
"""Every readiness state, best first."""

_GOOD = {"completed": READY, "partial": READY_PARTIAL}


@dataclass(frozen=True)
class RunFact:
    """What the job-run row of one run of the market-date says."""

    run_id: str
    status: str  # started | completed | partial | failed
    started_at: datetime
    completed_at: datetime | None = None
    users_processed: int = 0
    users_failed: int = 0
    cache_written: bool = True  # False: the run finished without writing the cache

    @property
    def finished(self) -> bool:
        return self.status != "started" and self.completed_at is not None

    @property
    def good(self) -> bool:
        """Finished with its recommendations persisted and cached."""
        return self.finished and self.status in _GOOD and self.cache_written


@dataclass(frozen=True)
class Readiness:
    """One market's session, judged at `as_of`."""

    market: str
    session: date
    state: str
    as_of: datetime
    deadline: datetime | None  # the open, UTC (None: no session that day)
    deadline_local: datetime | None
    finished_at: datetime | None = None
    run_id: str | None = None
    users_ok: int | None = None
    users_failed: int | None = None
    detail: str = ""  # what is missing, in words

    @property
    def margin(self) -> timedelta | None:
        """How long before the open the run finished (negative: after it)."""
        if self.deadline is None or self.finished_at is None:
            return None
        return self.deadline - self.finished_at

    @property
    def deadline_missed(self) -> bool:
        """The open has passed without a ready partition."""
        return (
            self.deadline is not None
            and self.as_of >= self.deadline
            and self.state not in (READY, READY_PARTIAL)
        )

    @property
    def ok(self) -> bool:
        """Nothing for an operator to do: ready, or no session that day."""
        return self.state in (READY, READY_PARTIAL, NO_SESSION)


def format_margin(margin: timedelta | None) -> str:
    """A margin in words: '1 h 25 min before the open', '15 min after the open', or '-'."""
    if margin is None:
        return "-"
    minutes = abs(margin) // timedelta(minutes=1)
    hours, minutes = divmod(minutes, 60)
    amount = f"{hours} h {minutes} min" if hours else f"{minutes} min"
    return f"{amount} {'before' if margin >= timedelta(0) else 'after'} the open"


def describe(r: Readiness) -> str:
    """One line an operator reads: the state, then when it finished against the open or
    what is missing."""
    if r.deadline_local is None:
        return f"{r.session}|{r.market}: {r.state} (the exchange is closed that day)"
    opens = f"{r.deadline_local:%H:%M %Z} ({r.deadline:%Y-%m-%d %H:%M} UTC)"
    parts = [f"{r.session}|{r.market}: {r.state}"]
    if r.finished_at is not None:
        parts.append(f"finished {r.finished_at:%Y-%m-%d %H:%M} UTC, {format_margin(r.margin)}")
    if r.detail:
        parts.append(r.detail)
    parts.append(f"opens {opens}")
    return "; ".join(parts)


def current_or_next_session(market: Market, now: datetime) -> date:
    """The market's session of its local date at `now`, or the next one when that date has
    no session (what the market's schedule builds next, or has built today)."""
    day = now.astimezone(market.tz).date()
    for _ in range(31):
        if is_session(market, day):
            return day
        day += timedelta(days=1)
    raise ValueError(f"{market.code}: no session in the 31 days from {now.date()}")


def judge(market: Market, session: date, runs: Sequence[RunFact], now: datetime) -> Readiness:
    """The readiness of `market`'s partition for `session` at `now`, from its runs."""
    if not is_session(market, session):
        return Readiness(market.code, session, NO_SESSION, now, None, None)
    deadline = session_open_utc(market, session)
    local = deadline.astimezone(market.tz)

    def with_run(state: str, run: RunFact | None, detail: str = "") -> Readiness:
        if run is None:
            return Readiness(market.code, session, state, now, deadline, local, detail=detail)
        return Readiness(
            market.code,
            session,
            state,
            now,
            deadline,
            local,
            finished_at=run.completed_at if run.finished else None,
            run_id=run.run_id,
            users_ok=run.users_processed - run.users_failed,
            users_failed=run.users_failed,
            detail=detail,
        )

    good = sorted((r for r in runs if r.good), key=lambda r: r.completed_at or deadline)
    in_time = [r for r in good if r.completed_at is not None and r.completed_at <= deadline]
    if in_time:
        # A completed run before the open beats a partial one; then the first to finish.
        best = min(in_time, key=lambda r: (r.status != "completed", r.completed_at))
        return with_run(_GOOD[best.status], best)
    newest = max(runs, key=lambda r: r.started_at) if runs else None
    unfinished = [r for r in runs if not r.finished]
    if now < deadline:
        if unfinished:
            return with_run(RUNNING, max(unfinished, key=lambda r: r.started_at))
        if newest is not None:
            return with_run(FAILED, newest, _what_failed(newest))
        return with_run(PENDING, None, "not started yet")
    if good:
        return with_run(LATE, good[0], "finished after the open")
    if unfinished:
        run = max(unfinished, key=lambda r: r.started_at)
        return with_run(RUNNING, run, "still running after the open")
    if newest is not None:
        return with_run(FAILED, newest, _what_failed(newest))
    return with_run(MISSING, None, "no run started")


def _what_failed(run: RunFact) -> str:
    if run.status in _GOOD and not run.cache_written:
        return "finished, but the cache was not written"
    return f"the run {run.status}"
