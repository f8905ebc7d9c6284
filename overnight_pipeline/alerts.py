"""Alerts to `ALERT_WEBHOOK_URL` (BEHAVIOUR §9): a JSON POST with a Slack-compatible `text` and
the structured fields `kind`, `market`, `market_date`, `run_id`, `state`, `detail`.

| kind | raised by | when |
| --- | --- | --- |
| `deadline_missed` | the `market_readiness` sensor | a market opened without its session's partition ready |
| `run_failed` | the job-run sensors | a run of the market-date finished `failed` |
| `partial_over_limit` | the job-run sensors | a `partial` run whose failed users exceed `MAX_FAILED_USER_RATIO` |
| `replay_mismatch` | the job-run sensors | the run's `replay_matches` check found differences |

Each is sent once per (market, market date, kind): it is recorded in the `alerts` table
first (the unique key refuses a second one, across ticks and daemon restarts), then claimed
and sent. A POST has a short timeout and is retried a few times with exponential backoff
within the call (connection errors, 5xx, 429); a receiver that stays down leaves the alert
`failed` with a later `next_attempt_at` (1, 2, 4 … up to 15 min), and the readiness
sensor's next tick sends it; after 24 h it is abandoned. After a failed delivery the process
leaves that receiver alone for a minute (the other alerts wait, recorded), so one that hangs
costs a sensor tick one delivery's timeouts, not one per alert. Nothing here raises: an alert
never fails a run, a sensor tick or the job-run row (failures are logged).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine
from tenacity import (
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential,
)

from overnight_pipeline.core import audit
from overnight_pipeline.core.readiness import Readiness, describe, format_margin
from overnight_pipeline.storage import alerts as store
from overnight_pipeline.storage import job_runs

DEADLINE_MISSED = "deadline_missed"
RUN_FAILED = "run_failed"
PARTIAL_OVER_LIMIT = "partial_over_limit"
REPLAY_MISMATCH = "replay_mismatch"
_TITLES = {
    DEADLINE_MISSED: "not ready at the open",
    RUN_FAILED: "run failed",
    PARTIAL_OVER_LIMIT: "too many users failed",
    REPLAY_MISMATCH: "replay differs from what was stored",
}
_FAILED_AT: dict[str, float] = {}  # webhook URL -> monotonic time of its last failure
LEASE = timedelta(minutes=5)  # a claim older than this belongs to a sender that died
ABANDON_AFTER = timedelta(hours=24)
_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Alert:
    kind: str
    market: str
    market_date: date
    state: str
    detail: str
    run_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        run = f" (run {self.run_id})" if self.run_id else ""
        return (
            f"[overnight] {self.market} {self.market_date}: {_TITLES[self.kind]}: "
            f"{self.state}, {self.detail}{run}"
        )

    def payload(self) -> dict[str, Any]:
        return {
            "text": self.text(),
            "kind": self.kind,
            "market": self.market,
            "market_date": self.market_date.isoformat(),
            "run_id": self.run_id,
            "state": self.state,
            "detail": self.detail,
            **self.extra,
        }


@dataclass(frozen=True)
class Webhook:
    """Where and how alerts are POSTed."""

    url: str
    timeout: float = 3.0  # seconds, per request (connect, read, write)
    attempts: int = 3  # per delivery, within one call
    backoff: float = 0.25  # seconds before the second attempt, then doubling
    # After a delivery failed, this process leaves the receiver alone this long (the alerts
    # wait, recorded): a receiver that hangs costs a sensor tick ~10 s once, not per alert.
    pause: float = 60.0

    @property
    def where(self) -> str:
        """The receiver's scheme and host, for logs (a webhook's path is often its secret)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}"


@dataclass(frozen=True)
class Delivery:
    recorded: int = 0
    sent: int = 0
    failed: int = 0


class _Transient(Exception):
    """A refusal worth retrying at once: 5xx, 429."""


def deadline_alert(r: Readiness) -> Alert:
    """The `deadline_missed` alert of a market whose open passed without its partition
    ready."""
    return Alert(
        DEADLINE_MISSED,
        r.market,
        r.session,
        r.state,
        r.detail or r.state,
        r.run_id,
        extra={
            "deadline_utc": r.deadline.isoformat() if r.deadline else None,
            "deadline_local": r.deadline_local.isoformat() if r.deadline_local else None,
            "finished_at": r.finished_at.isoformat() if r.finished_at else None,
            "margin": format_margin(r.margin),
            "summary": describe(r),
        },
    )


def run_alerts(row: job_runs.JobRun, *, max_failed_user_ratio: float) -> list[Alert]:
    """The alerts a finished job-run row calls for: failed, partial above the failed-user
    limit (the run's own `failed_users_within_limit` check, or the ratio), replay mismatch."""
    if row.market is None or row.market_date is None:
        return []  # not one market-date: nothing to key the alert by
    checks = dict(row.metrics.get("checks") or {})
    details = dict(row.error_details or {})
    found: list[Alert] = []

    def alert(kind: str, detail: str) -> None:
        found.append(
            Alert(
                kind,
                row.market or "",
                row.market_date or date.min,
                row.status,
                detail,
                row.run_id,
                extra={"users_processed": row.users_processed, "users_failed": row.users_failed},
            )
        )

    if row.status == audit.FAILED:
        steps = details.get("failed_steps") or {}
        where = f"steps {', '.join(sorted(steps))}: " if steps else ""
        alert(RUN_FAILED, (where + str(details.get("run_error", "run failed")))[:500])
    ratio = row.users_failed / row.users_processed if row.users_processed else 0.0
    over = not checks.get("recommendations:failed_users_within_limit", {}).get("passed", True)
    if row.status == audit.PARTIAL and (over or ratio > max_failed_user_ratio):
        alert(
            PARTIAL_OVER_LIMIT,
            f"{row.users_failed} of {row.users_processed} users failed ({ratio:.2%}; "
            f"limit {max_failed_user_ratio:.2%})",
        )
    if checks.get("recommendations:replay_matches", {}).get("passed") is False:
        alert(REPLAY_MISMATCH, "a replayed user differs from what was stored: see the check")
    return found


def raise_alerts(
    engine: Engine, webhook: Webhook | None, alerts: Iterable[Alert], *, now: datetime | None = None
) -> Delivery:
    """Record each alert (once per market, market date and kind) and send what is due.
    Without a webhook, nothing is recorded or sent. Never raises."""
    alerts = list(alerts)
    if webhook is None:
        return Delivery()
    now = now or datetime.now(UTC)
    recorded = 0
    if alerts:
        try:
            with engine.begin() as conn:
                for a in alerts:
                    recorded += store.record(
                        conn,
                        market=a.market,
                        market_date=a.market_date,
                        kind=a.kind,
                        payload=a.payload(),
                        now=now,
                        run_id=a.run_id,
                    )
        except Exception:
            _log.exception("could not record %d alert(s)", len(alerts))
            return Delivery()
    done = deliver_due(engine, webhook, now=now)
    return Delivery(recorded, done.sent, done.failed)


def deliver_due(
    engine: Engine, webhook: Webhook | None, *, now: datetime | None = None, limit: int = 20
) -> Delivery:
    """Send the recorded alerts that are due, oldest first, until one fails (the receiver
    is down: the rest wait for a later call) or `limit` are sent. Never raises."""
    if webhook is None:
        return Delivery()
    if time.monotonic() - _FAILED_AT.get(webhook.url, -webhook.pause) < webhook.pause:
        return Delivery()  # it failed moments ago: a later call sends what is due
    now = now or datetime.now(UTC)
    sent = 0
    with httpx.Client(timeout=webhook.timeout) as client:
        for _ in range(limit):
            try:
                with engine.begin() as conn:
                    claimed = store.claim_next(conn, now=now, lease=LEASE)
            except Exception:
                _log.exception("could not claim an alert to send")
                return Delivery(sent=sent)
            if claimed is None:
                break
            error = _post(client, webhook, claimed.payload)
            try:
                with engine.begin() as conn:
                    if error is None:
                        store.mark_sent(conn, claimed.id, now=datetime.now(UTC))
                    else:
                        retry_at = _retry_at(claimed, now)
                        store.mark_failed(conn, claimed.id, error=error, retry_at=retry_at)
            except Exception:  # the lease expires and the alert is claimed again
                _log.exception("could not record the delivery of alert %s", claimed.id)
            if error is not None:
                _FAILED_AT[webhook.url] = time.monotonic()
                _log.warning(
                    "alert %s %s %s not delivered to %s (delivery %d): %s",
                    claimed.kind,
                    claimed.market,
                    claimed.market_date,
                    webhook.where,
                    claimed.attempts,
                    error,
                )
                return Delivery(sent=sent, failed=1)
            sent += 1
            _FAILED_AT.pop(webhook.url, None)
            _log.info(
                "alert %s %s %s sent to %s",
                claimed.kind,
                claimed.market,
                claimed.market_date,
                webhook.where,
            )
    return Delivery(sent=sent)


def _retry_at(claimed: store.ClaimedAlert, now: datetime) -> datetime | None:
    if now - claimed.created_at >= ABANDON_AFTER:
        return None
    return now + min(timedelta(minutes=2 ** (claimed.attempts - 1)), timedelta(minutes=15))


def _post(client: httpx.Client, webhook: Webhook, payload: Mapping[str, Any]) -> str | None:
    """POST `payload`, retrying transient failures; None when the receiver took it, else
    why not (without the URL)."""

    def once() -> None:
        response = client.post(webhook.url, json=dict(payload))
        if response.status_code >= 500 or response.status_code == 429:
            raise _Transient(f"HTTP {response.status_code}")
        if response.status_code >= 300:
            raise ValueError(f"HTTP {response.status_code}")

    try:
        for attempt in Retrying(
            stop=stop_after_attempt(webhook.attempts),
            wait=wait_exponential(multiplier=webhook.backoff, max=2),
            retry=retry_if_exception_type((httpx.TransportError, _Transient)),
            reraise=True,
        ):
            with attempt:
                once()
    except Exception as exc:  # whatever it is, the alert waits for a later call
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return None
