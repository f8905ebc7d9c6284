"""Alerts to a webhook: recorded once per market, market date and kind, sent to a real local
receiver, retried when it is down, never raising (`overnight_pipeline.alerts`)."""

from __future__ import annotations

import logging
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, delete

from overnight_pipeline.alerts import (
    DEADLINE_MISSED,
    PARTIAL_OVER_LIMIT,
    REPLAY_MISMATCH,
    RUN_FAILED,
    Alert,
    Webhook,
    deliver_due,
    raise_alerts,
    run_alerts,
)
from overnight_pipeline.storage import alerts as store
from overnight_pipeline.storage.job_runs import JobRun
from overnight_pipeline.storage.models import alerts_table
from overnight_pipeline_tests.receiver import down_url, webhook_receiver

DAY = date(2026, 12, 7)
NOW = datetime(2026, 12, 7, 15, 0, tzinfo=UTC)


@pytest.fixture
def engine(pg_engine: Engine) -> Iterator[Engine]:
    """The session's PostgreSQL database with no alerts before or after the test."""
    with pg_engine.begin() as conn:
        conn.execute(delete(alerts_table))
    yield pg_engine
    with pg_engine.begin() as conn:
        conn.execute(delete(alerts_table))


def missed(market: str = "NYSE", day: date = DAY) -> Alert:
    return Alert(DEADLINE_MISSED, market, day, "missing", "no run started", None)


def rows(engine: Engine) -> list[dict]:
    with engine.connect() as conn:
        return store.alerts_of(conn)


def test_an_alert_is_posted_once_per_market_date_and_kind(engine: Engine) -> None:
    with webhook_receiver() as receiver:
        hook = Webhook(receiver.url)
        first = raise_alerts(engine, hook, [missed(), missed("B3")], now=NOW)
        for minutes in (2, 4, 60):  # later ticks raise the same alerts again
            later = NOW + timedelta(minutes=minutes)
            again = raise_alerts(engine, hook, [missed(), missed("B3")], now=later)
            assert (again.recorded, again.sent) == (0, 0)
    assert (first.recorded, first.sent, first.failed) == (2, 2, 0)
    assert receiver.kinds() == [
        (DEADLINE_MISSED, "B3", "2026-12-07"),
        (DEADLINE_MISSED, "NYSE", "2026-12-07"),
    ]
    nyse = next(r for r in receiver.received if r["market"] == "NYSE")
    assert nyse["text"] == (
        "[overnight] NYSE 2026-12-07: not ready at the open: missing, no run started"
    )
    assert {k: nyse[k] for k in ("state", "detail", "run_id")} == {
        "state": "missing",
        "detail": "no run started",
        "run_id": None,
    }
    assert {r["status"] for r in rows(engine)} == {"sent"}


def test_another_kind_for_the_same_market_date_is_its_own_alert(engine: Engine) -> None:
    failed = Alert(RUN_FAILED, "NYSE", DAY, "failed", "steps exchange_rates: boom", "run-1")
    with webhook_receiver() as receiver:
        raise_alerts(engine, Webhook(receiver.url), [missed()], now=NOW)
        raise_alerts(engine, Webhook(receiver.url), [failed, missed()], now=NOW)
    assert receiver.kinds() == [
        (DEADLINE_MISSED, "NYSE", "2026-12-07"),
        (RUN_FAILED, "NYSE", "2026-12-07"),
    ]
    assert receiver.received[1]["run_id"] == "run-1"


def test_a_receiver_that_is_down_is_retried_later_never_raising(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    started = datetime.now(UTC)
    with caplog.at_level(logging.WARNING, logger="overnight_pipeline.alerts"):
        down = raise_alerts(engine, Webhook(down_url(), backoff=0.01), [missed()], now=NOW)
    assert (down.recorded, down.sent, down.failed) == (1, 0, 1)
    assert datetime.now(UTC) - started < timedelta(seconds=3)
    [row] = rows(engine)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    assert row["next_attempt_at"] == NOW + timedelta(minutes=1)
    assert "ConnectError" in row["last_error"]
    assert "not delivered to http://127.0.0.1:" in caplog.text
    assert "secret" not in caplog.text and "/hooks" not in caplog.text

    with webhook_receiver() as receiver:
        hook = Webhook(receiver.url)
        assert deliver_due(engine, hook, now=NOW + timedelta(seconds=30)).sent == 0  # not yet
        assert deliver_due(engine, hook, now=NOW + timedelta(minutes=1)).sent == 1
        assert deliver_due(engine, hook, now=NOW + timedelta(minutes=5)).sent == 0
    assert receiver.kinds() == [(DEADLINE_MISSED, "NYSE", "2026-12-07")]
    assert rows(engine)[0]["status"] == "sent"


def test_after_a_failure_the_process_leaves_the_receiver_alone_for_a_while(
    engine: Engine,
) -> None:
    """A receiver that hangs or refuses costs one delivery's timeouts, not one per alert:
    the other alerts wait, recorded, for a later call."""
    hook = Webhook(down_url(), backoff=0.01)
    first = raise_alerts(engine, hook, [missed()], now=NOW)
    second = raise_alerts(engine, hook, [missed("B3")], now=NOW + timedelta(minutes=2))
    assert (first.failed, second.recorded, second.failed, second.sent) == (1, 1, 0, 0)
    assert {(r["market"], r["status"], r["attempts"]) for r in rows(engine)} == {
        ("NYSE", "failed", 1),
        ("B3", "pending", 0),
    }


def test_a_receiver_that_hangs_costs_its_timeouts_and_no_more(engine: Engine) -> None:
    with socket.socket() as listener:  # accepts connections (backlog), never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/hooks/hangs"
        started = time.monotonic()
        done = raise_alerts(
            engine, Webhook(url, timeout=0.3, attempts=2, backoff=0.01), [missed()], now=NOW
        )
        elapsed = time.monotonic() - started
    assert (done.sent, done.failed) == (0, 1)
    assert 0.6 <= elapsed < 3
    assert "ReadTimeout" in rows(engine)[0]["last_error"]


def test_a_5xx_is_retried_at_once_with_backoff(engine: Engine) -> None:
    with webhook_receiver() as receiver:
        receiver.statuses = [503, 500]
        done = raise_alerts(engine, Webhook(receiver.url, backoff=0.01), [missed()], now=NOW)
    assert (done.sent, receiver.requests, len(receiver.received)) == (1, 3, 1)


def test_an_alert_undelivered_for_a_day_is_abandoned(engine: Engine) -> None:
    hook = Webhook(down_url(), attempts=1, pause=0)
    raise_alerts(engine, hook, [missed()], now=NOW)
    deliver_due(engine, hook, now=NOW + timedelta(hours=25))
    [row] = rows(engine)
    assert (row["status"], row["attempts"]) == ("abandoned", 2)
    with webhook_receiver() as receiver:
        assert deliver_due(engine, Webhook(receiver.url), now=NOW + timedelta(days=2)).sent == 0


def test_a_claim_is_held_by_one_sender_until_its_lease_expires(engine: Engine) -> None:
    raise_alerts(engine, None, [missed()], now=NOW)  # no webhook: nothing recorded
    assert rows(engine) == []
    with engine.begin() as conn:
        store.record(
            conn, market="NYSE", market_date=DAY, kind=DEADLINE_MISSED, payload={}, now=NOW
        )
    with engine.begin() as a, engine.begin() as b:
        first = store.claim_next(a, now=NOW, lease=timedelta(minutes=5))
        assert first is not None and first.attempts == 1
        assert store.claim_next(b, now=NOW, lease=timedelta(minutes=5)) is None  # locked
    with engine.begin() as conn:  # the first sender died without a word
        assert (
            store.claim_next(conn, now=NOW + timedelta(minutes=4), lease=timedelta(minutes=5))
            is None
        )
        again = store.claim_next(conn, now=NOW + timedelta(minutes=5), lease=timedelta(minutes=5))
    assert again is not None and again.attempts == 2


def test_run_alerts_from_a_finished_job_run_row() -> None:
    def row(status: str, failed: int = 0, checks: dict | None = None, **kw: object) -> JobRun:
        return JobRun(
            run_id="r1",
            correlation_id=uuid.uuid4(),
            started_at=NOW,
            status=status,
            market="NYSE",
            market_date=DAY,
            users_processed=100,
            users_failed=failed,
            metrics={"checks": checks or {}},
            **kw,  # type: ignore[arg-type]
        )

    assert run_alerts(row("completed"), max_failed_user_ratio=0.05) == []
    assert run_alerts(row("partial", 5), max_failed_user_ratio=0.05) == []  # at the limit
    [over] = run_alerts(row("partial", 6), max_failed_user_ratio=0.05)
    assert (over.kind, over.detail) == (
        PARTIAL_OVER_LIMIT,
        "6 of 100 users failed (6.00%; limit 5.00%)",
    )
    # The run's own check decides when the launchpad changed its limit.
    limit_check = {"recommendations:failed_users_within_limit": {"passed": False}}
    assert [
        a.kind for a in run_alerts(row("partial", 1, limit_check), max_failed_user_ratio=0.05)
    ] == [PARTIAL_OVER_LIMIT]
    failed = row(
        "failed",
        checks={"recommendations:replay_matches": {"passed": False, "severity": "ERROR"}},
        error_details={"failed_steps": {"asset_prices": "x"}, "run_error": "step failed"},
    )
    kinds = run_alerts(failed, max_failed_user_ratio=0.05)
    assert [(a.kind, a.detail) for a in kinds] == [
        (RUN_FAILED, "steps asset_prices: step failed"),
        (REPLAY_MISMATCH, "a replayed user differs from what was stored: see the check"),
    ]
    no_market = JobRun(run_id="r2", correlation_id=uuid.uuid4(), started_at=NOW, status="failed")
    assert run_alerts(no_market, max_failed_user_ratio=0.05) == []
