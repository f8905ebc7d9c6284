"""`overnight status` as an operator runs it at 4 a.m.: the real command against a migrated
PostgreSQL database holding job-run rows (exit codes, table, JSON)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from overnight_pipeline.core.markets import DEFAULT_MARKETS, is_session
from overnight_pipeline.storage import job_runs
from overnight_pipeline_tests.support.databases import engine_for, migrated_pg_database
from overnight_pipeline_tests.test_cli import GOOD_MARKETS, closed_port, overnight

MONDAY = date(2026, 11, 23)  # a past Monday; Tokyo is closed (Labour Thanksgiving Day)


NYSE = DEFAULT_MARKETS[0]


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def status_db() -> Iterator[str]:
    yield from migrated_pg_database("overnight_status")


@pytest.fixture(scope="module")
def engine(status_db: str) -> Iterator[Engine]:
    engine = next(gen := engine_for(status_db))
    runs = [
        ("NYSE", "completed", "2026-11-23T12:00", "2026-11-23T12:40", True),
        ("B3", "partial", "2026-11-23T10:00", "2026-11-23T10:30", True),
        ("XETRA", "completed", "2026-11-23T07:40", "2026-11-23T08:15", True),
        ("LSE", "completed", "2026-11-23T06:00", "2026-11-23T06:20", False),
        ("NASDAQ", "started", "2026-11-23T14:00", None, True),
    ]
    with engine.begin() as conn:
        for market, status, start, end, cache in runs:
            run = job_runs.JobRun(
                run_id=f"run-{market.lower()}",
                correlation_id=uuid.uuid4(),
                started_at=at(start),
                completed_at=at(end) if end else None,
                status=status,
                market=market,
                market_date=MONDAY,
                users_processed=50,
                users_failed=3 if status == "partial" else 0,
                metrics={"cache_warmed": cache},
            )
            if end is None:
                job_runs.record_started(conn, run)
            else:
                job_runs.record_finished(conn, run)
    yield engine
    next(gen, None)


def test_status_of_a_past_night_as_json_and_as_a_table(
    status_db: str, engine: Engine, tmp_path: Path
) -> None:
    done = overnight(
        "status", "--date", MONDAY.isoformat(), "--json", cwd=tmp_path, DATABASE_URL=status_db
    )
    assert done.returncode == 1, done.stderr  # not every market was ready
    doc = json.loads(done.stdout)
    assert doc["date"] == "2026-11-23" and doc["ready"] is False
    rows = {m["market"]: m for m in doc["markets"]}
    assert list(rows) == ["NYSE", "NASDAQ", "B3", "LSE", "TSE", "XETRA"]
    assert {m: r["state"] for m, r in rows.items()} == {
        "NYSE": "ready",
        "NASDAQ": "running",
        "B3": "ready-partial",
        "LSE": "failed",
        "TSE": "no-session",
        "XETRA": "late",
    }
    nyse = rows["NYSE"]
    assert nyse == {
        "market": "NYSE",
        "session": "2026-11-23",
        "state": "ready",
        "ok": True,
        "open_local": "2026-11-23T09:30:00-05:00",
        "open_utc": "2026-11-23T14:30:00+00:00",
        "finished_at": "2026-11-23T12:40:00+00:00",
        "margin_seconds": 6600,
        "margin": "1 h 50 min before the open",
        "users_ok": 50,
        "users_failed": 0,
        "run_id": "run-nyse",
        "detail": "",
    }
    assert (rows["B3"]["users_ok"], rows["B3"]["users_failed"]) == (47, 3)
    assert rows["XETRA"]["margin_seconds"] == -15 * 60
    assert rows["LSE"]["detail"] == "finished, but the cache was not written"
    assert rows["TSE"]["ok"] and rows["TSE"]["open_utc"] is None

    table = overnight("status", "--date", "2026-11-23", cwd=tmp_path, DATABASE_URL=status_db)
    assert table.returncode == 1, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["market", "session", "opens", "(local)"]
    nyse_line = next(line for line in lines if line.startswith("NYSE "))
    assert nyse_line.split()[:9] == [
        "NYSE",
        "2026-11-23",
        "09:30",
        "EST",
        "2026-11-23",
        "14:30",
        "ready",
        "2026-11-23",
        "12:40",
    ]
    assert "+1h50m" in nyse_line and "50/0" in nyse_line and "run-nyse" in nyse_line
    assert "-15m" in next(line for line in lines if line.startswith("XETRA "))
    assert lines[-1].endswith("NOT every market ready")


def test_exit_0_when_every_market_with_a_session_is_ready(
    status_db: str, engine: Engine, tmp_path: Path
) -> None:
    markets = tmp_path / "markets.json"
    markets.write_text(json.dumps(GOOD_MARKETS))  # NYSE alone
    env = {"DATABASE_URL": status_db, "MARKETS_FILE": str(markets)}
    ready = overnight("status", "--date", "2026-11-23", cwd=tmp_path, **env)
    assert ready.returncode == 0, ready.stdout + ready.stderr
    assert ready.stdout.splitlines()[-1].endswith(": every market ready")
    holiday = overnight("status", "--date", "2026-12-25", "--json", cwd=tmp_path, **env)
    assert holiday.returncode == 0, holiday.stderr
    [row] = json.loads(holiday.stdout)["markets"]
    assert (row["state"], row["open_utc"], row["detail"]) == (
        "no-session",
        None,
        "the exchange is closed",
    )
    # A session whose open is still to come is pending: not ready yet.
    day = date.today() + timedelta(days=30)
    while not is_session(NYSE, day):
        day += timedelta(days=1)
    future = overnight("status", "--date", day.isoformat(), "--json", cwd=tmp_path, **env)
    assert future.returncode == 1
    assert json.loads(future.stdout)["markets"][0]["state"] == "pending"


def test_default_is_each_markets_current_or_next_session(
    status_db: str, engine: Engine, tmp_path: Path
) -> None:
    done = overnight("status", "--json", cwd=tmp_path, DATABASE_URL=status_db)
    assert done.returncode == 1, done.stderr  # no run for the current sessions
    doc = json.loads(done.stdout)
    today = datetime.fromisoformat(doc["as_of"]).date()
    assert doc["date"] is None
    for row in doc["markets"]:
        # Each market's own session: its local date at `as_of`, or its next trading day.
        assert date.fromisoformat(row["session"]) >= date.fromordinal(today.toordinal() - 1)
        assert row["state"] in ("pending", "missing") and row["open_utc"] is not None


def test_a_bad_date_exits_2_and_an_unreachable_database_3(status_db: str, tmp_path: Path) -> None:
    bad = overnight("status", "--date", "2026-13-01", cwd=tmp_path, DATABASE_URL=status_db)
    assert bad.returncode == 2 and "--date must be YYYY-MM-DD (got '2026-13-01')" in bad.stderr
    assert bad.stdout == "" and "Traceback" not in bad.stderr
    url = f"postgresql://root@127.0.0.1:{closed_port()}/overnight"
    down = overnight("status", cwd=tmp_path, DATABASE_URL=url)
    assert down.returncode == 3, down.stderr
    assert "DATABASE_URL: cannot connect to 127.0.0.1:" in down.stderr
    assert "Traceback" not in down.stderr
