"""The runs' facts read for readiness (`storage.job_runs.run_facts`), on both databases."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Connection, event

from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.core.readiness import LATE, MISSING, READY, READY_PARTIAL
from overnight_pipeline.storage import job_runs

MONDAY = date(2026, 12, 7)
MARKETS = {m.code: m for m in DEFAULT_MARKETS}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def finished(
    conn: Connection,
    market: str,
    day: date,
    status: str,
    start: str,
    end: str,
    metrics: dict[str, Any] | None = None,
) -> str:
    run_id = uuid.uuid4().hex
    job_runs.record_finished(
        conn,
        job_runs.JobRun(
            run_id=run_id,
            correlation_id=uuid.uuid4(),
            started_at=at(start),
            completed_at=at(end),
            status=status,
            market=market,
            market_date=day,
            users_processed=10,
            users_failed=1 if status == "partial" else 0,
            metrics=metrics if metrics is not None else {"cache_warmed": True},
        ),
    )
    return run_id


def test_run_facts_reads_every_market_date_in_one_statement(db_conn: Connection) -> None:
    ok = finished(db_conn, "NYSE", MONDAY, "completed", "2026-12-07T12:00", "2026-12-07T12:30")
    no_cache = finished(
        db_conn,
        "NYSE",
        MONDAY,
        "partial",
        "2026-12-07T11:00",
        "2026-12-07T11:20",
        {"cache_warmed": False},
    )
    other_day = finished(
        db_conn, "B3", date(2026, 12, 4), "completed", "2026-12-04T09:00", "2026-12-04T09:30"
    )
    statements: list[str] = []
    listen = lambda *a: statements.append(a[2])  # noqa: E731
    event.listen(db_conn, "before_cursor_execute", listen)
    try:
        facts = job_runs.run_facts(db_conn, [("NYSE", MONDAY), ("B3", MONDAY), ("TSE", MONDAY)])
    finally:
        event.remove(db_conn, "before_cursor_execute", listen)
    assert len(statements) == 1
    assert [f.run_id for f in facts[("NYSE", MONDAY)]] == [no_cache, ok]  # oldest first
    assert [f.cache_written for f in facts[("NYSE", MONDAY)]] == [False, True]
    assert facts[("B3", MONDAY)] == [] and facts[("TSE", MONDAY)] == []
    assert other_day not in {f.run_id for fs in facts.values() for f in fs}
    nyse = facts[("NYSE", MONDAY)][1]
    assert (nyse.status, nyse.users_processed, nyse.users_failed) == ("completed", 10, 0)
    assert nyse.completed_at == at("2026-12-07T12:30")


def test_rows_written_before_cache_warmed_existed(db_conn: Connection) -> None:
    """Old rows: `completed` wrote the cache; `partial` did when the cache step
    materialised (its metrics' assets name it)."""
    day = date(2026, 12, 8)
    finished(db_conn, "NYSE", day, "completed", "2026-12-08T10:00", "2026-12-08T10:10", {})
    finished(
        db_conn,
        "B3",
        day,
        "partial",
        "2026-12-08T10:00",
        "2026-12-08T10:10",
        {"assets": {"recommendation_cache": {"written": 3, "partitions": 1}}},
    )
    finished(
        db_conn,
        "XETRA",
        day,
        "partial",
        "2026-12-08T05:00",
        "2026-12-08T05:10",
        {"assets": {"asset_scores": {"partitions": 1}}},
    )
    facts = job_runs.run_facts(db_conn, [("NYSE", day), ("B3", day), ("XETRA", day)])
    assert [f.cache_written for f in facts[("NYSE", day)]] == [True]
    assert [f.cache_written for f in facts[("B3", day)]] == [True]
    assert [f.cache_written for f in facts[("XETRA", day)]] == [False]


def test_market_readiness_judges_each_market_at_its_open(db_conn: Connection) -> None:
    finished(db_conn, "NYSE", MONDAY, "completed", "2026-12-07T12:00", "2026-12-07T12:30")
    finished(db_conn, "B3", MONDAY, "partial", "2026-12-07T10:00", "2026-12-07T10:30")
    finished(db_conn, "XETRA", MONDAY, "completed", "2026-12-07T08:00", "2026-12-07T08:30")
    markets = [MARKETS[c] for c in ("NYSE", "B3", "XETRA", "LSE")]
    states = {
        r.market: r.state
        for r in job_runs.market_readiness(db_conn, markets, now=at("2026-12-07T15:00"))
    }
    # XETRA opens 09:00 CET = 08:00 UTC: finished half an hour late. LSE: never ran.
    assert states == {"NYSE": READY, "B3": READY_PARTIAL, "XETRA": LATE, "LSE": MISSING}


def test_unfinished_run_ids_are_the_newest_rows_still_started(db_conn: Connection) -> None:
    done = finished(db_conn, "NYSE", MONDAY, "completed", "2026-12-07T12:00", "2026-12-07T12:30")
    started = []
    for hour in ("09", "10", "11"):
        run = job_runs.JobRun(
            run_id=uuid.uuid4().hex,
            correlation_id=uuid.uuid4(),
            started_at=at(f"2026-12-07T{hour}:00"),
        )
        assert job_runs.record_started(db_conn, run)
        started.append(run.run_id)
    assert job_runs.unfinished_run_ids(db_conn, limit=2) == started[:0:-1]
    assert done not in job_runs.unfinished_run_ids(db_conn, limit=20)
