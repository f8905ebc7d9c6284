"""Readiness per market and session, on the real exchange calendars (BEHAVIOUR §9)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.core.readiness import (
    FAILED,
    LATE,
    MISSING,
    NO_SESSION,
    PENDING,
    READY,
    READY_PARTIAL,
    RUNNING,
    RunFact,
    current_or_next_session,
    describe,
    format_margin,
    judge,
)

MARKETS = {m.code: m for m in DEFAULT_MARKETS}
NYSE, TSE, B3 = MARKETS["NYSE"], MARKETS["TSE"], MARKETS["B3"]
MONDAY = date(2026, 12, 7)  # NYSE opens 09:30 EST = 14:30 UTC


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def run(started: str, finished: str | None, status: str = "completed", **kw) -> RunFact:
    return RunFact(
        run_id=f"r-{started}",
        status=status if finished else "started",
        started_at=at(started),
        completed_at=at(finished) if finished else None,
        users_processed=kw.pop("users", 10),
        users_failed=kw.pop("failed", 0),
        **kw,
    )


def test_a_run_finished_before_the_open_is_ready_with_its_margin() -> None:
    r = judge(NYSE, MONDAY, [run("2026-12-07T12:30", "2026-12-07T12:40")], at("2026-12-07T15:00"))
    assert r.state == READY and r.ok and not r.deadline_missed
    assert r.deadline == at("2026-12-07T14:30")
    assert r.deadline_local is not None and r.deadline_local.strftime("%H:%M %Z") == "09:30 EST"
    assert r.margin == timedelta(hours=1, minutes=50)
    assert (r.users_ok, r.users_failed, r.run_id) == (10, 0, "r-2026-12-07T12:30")


def test_a_run_finished_after_the_open_is_late() -> None:
    r = judge(NYSE, MONDAY, [run("2026-12-07T14:00", "2026-12-07T14:45")], at("2026-12-07T15:00"))
    assert r.state == LATE and r.deadline_missed and r.margin == -timedelta(minutes=15)


def test_no_run_is_pending_before_the_open_and_missing_after_it() -> None:
    assert judge(NYSE, MONDAY, [], at("2026-12-07T14:29")).state == PENDING
    missing = judge(NYSE, MONDAY, [], at("2026-12-07T14:30"))
    assert missing.state == MISSING and missing.deadline_missed and not missing.ok


def test_a_holiday_has_no_session_and_nothing_is_expected() -> None:
    r = judge(NYSE, date(2026, 12, 25), [], at("2026-12-25T20:00"))
    assert r.state == NO_SESSION and r.ok and not r.deadline_missed and r.deadline is None
    assert judge(NYSE, date(2026, 12, 6), [], at("2026-12-06T20:00")).state == NO_SESSION


def test_tokyo_deadline_is_midnight_utc_so_the_run_belongs_to_the_previous_utc_day() -> None:
    # TSE opens 09:00 JST = 00:00 UTC; its schedule fires 22:30 UTC the day before.
    tuesday = date(2026, 12, 8)
    ready = judge(
        TSE, tuesday, [run("2026-12-07T22:30", "2026-12-07T23:50")], at("2026-12-08T01:00")
    )
    assert ready.state == READY and ready.deadline == at("2026-12-08T00:00")
    late = judge(
        TSE, tuesday, [run("2026-12-07T23:30", "2026-12-08T00:10")], at("2026-12-08T01:00")
    )
    assert late.state == LATE


def test_new_york_deadline_follows_daylight_saving_time() -> None:
    # DST starts Sunday 2026-03-08: Friday opens 14:30 UTC, Monday 13:30 UTC.
    friday = judge(
        NYSE,
        date(2026, 3, 6),
        [run("2026-03-06T12:00", "2026-03-06T13:45")],
        at("2026-03-06T16:00"),
    )
    monday = judge(
        NYSE,
        date(2026, 3, 9),
        [run("2026-03-09T12:00", "2026-03-09T13:45")],
        at("2026-03-09T16:00"),
    )
    assert (friday.state, friday.deadline) == (READY, at("2026-03-06T14:30"))
    assert (monday.state, monday.deadline) == (LATE, at("2026-03-09T13:30"))


def test_partial_runs_failed_runs_and_runs_without_a_cache() -> None:
    now = at("2026-12-07T15:00")
    partial = judge(
        NYSE, MONDAY, [run("2026-12-07T12:30", "2026-12-07T13:00", "partial", failed=2)], now
    )
    assert (partial.state, partial.users_ok, partial.users_failed) == (READY_PARTIAL, 8, 2)
    no_cache = run("2026-12-07T12:30", "2026-12-07T13:00", "partial", cache_written=False)
    r = judge(NYSE, MONDAY, [no_cache], now)
    assert r.state == FAILED and "cache was not written" in r.detail and r.deadline_missed
    failed = judge(NYSE, MONDAY, [run("2026-12-07T12:30", "2026-12-07T13:00", "failed")], now)
    assert failed.state == FAILED and failed.detail == "the run failed"
    # A failed run retried in time is ready; a completed run beats a partial one.
    retried = [
        run("2026-12-07T12:30", "2026-12-07T13:00", "failed"),
        run("2026-12-07T13:10", "2026-12-07T13:40"),
    ]
    assert judge(NYSE, MONDAY, retried, now).state == READY
    both = [
        run("2026-12-07T12:30", "2026-12-07T13:00", "partial"),
        run("2026-12-07T13:10", "2026-12-07T13:40"),
    ]
    assert judge(NYSE, MONDAY, both, now).state == READY


def test_a_run_still_going_is_running_and_misses_the_deadline_once_past_it() -> None:
    going = [run("2026-12-07T14:00", None)]
    before = judge(NYSE, MONDAY, going, at("2026-12-07T14:10"))
    after = judge(NYSE, MONDAY, going, at("2026-12-07T14:40"))
    assert before.state == RUNNING and not before.deadline_missed
    assert after.state == RUNNING and after.deadline_missed


@pytest.mark.parametrize(
    ("market", "now", "expected"),
    [
        # Sunday 22:00 in New York is Monday 03:00 UTC: New York's next session is Monday,
        # Tokyo (Monday noon) is in Monday's session, Sao Paulo (Monday 00:00) too.
        ("NYSE", "2026-12-07T03:00", date(2026, 12, 7)),
        ("TSE", "2026-12-07T03:00", date(2026, 12, 7)),
        ("B3", "2026-12-07T03:00", date(2026, 12, 7)),
        # Saturday: the next session is Monday; Christmas Friday: the Monday after.
        ("NYSE", "2026-12-05T15:00", date(2026, 12, 7)),
        ("NYSE", "2026-12-25T15:00", date(2026, 12, 28)),
        # During a session day, that day (before and after its open).
        ("NYSE", "2026-12-07T09:00", date(2026, 12, 7)),
        ("NYSE", "2026-12-07T20:00", date(2026, 12, 7)),
    ],
)
def test_current_or_next_session(market: str, now: str, expected: date) -> None:
    assert current_or_next_session(MARKETS[market], at(now)) == expected


def test_describe_names_the_state_the_margin_and_the_open() -> None:
    ready = judge(
        NYSE, MONDAY, [run("2026-12-07T12:30", "2026-12-07T13:05")], at("2026-12-07T15:00")
    )
    assert format_margin(ready.margin) == "1 h 25 min before the open"
    assert describe(ready) == (
        "2026-12-07|NYSE: ready; finished 2026-12-07 13:05 UTC, 1 h 25 min before the open; "
        "opens 09:30 EST (2026-12-07 14:30 UTC)"
    )
    late = judge(
        NYSE, MONDAY, [run("2026-12-07T14:00", "2026-12-07T14:45")], at("2026-12-07T15:00")
    )
    assert format_margin(late.margin) == "15 min after the open"
    missing = judge(NYSE, MONDAY, [], at("2026-12-07T15:00"))
    assert format_margin(missing.margin) == "-"
    assert describe(missing).startswith("2026-12-07|NYSE: missing; no run started; opens")
    closed = judge(NYSE, date(2026, 12, 25), [], at("2026-12-25T15:00"))
    assert describe(closed) == "2026-12-25|NYSE: no-session (the exchange is closed that day)"
