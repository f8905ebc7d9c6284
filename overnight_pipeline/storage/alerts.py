"""`alerts`: one row per (market, market date, kind), the durable half of the alerts
(`overnight_pipeline.alerts` sends them).

An alert is recorded once (`INSERT … ON CONFLICT DO NOTHING` on the unique key) and then
claimed for delivery: a claim moves it to `sending` and leases it until `next_attempt_at`,
so two senders (sensor ticks, a daemon restarted mid-send) never hold it together; a
sender that died leaves a lease that expires and the alert is claimed again. Functions
take a `Connection` and never commit.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Connection, select, update
from sqlalchemy.dialects import postgresql, sqlite

from overnight_pipeline.storage.models import alerts_table

PENDING, SENDING, SENT, FAILED, ABANDONED = "pending", "sending", "sent", "failed", "abandoned"
_DUE = (PENDING, SENDING, FAILED)  # sending: due again only when its lease has expired


@dataclass(frozen=True)
class ClaimedAlert:
    id: int
    market: str
    market_date: date
    kind: str
    run_id: str | None
    payload: Mapping[str, Any]
    attempts: int  # this delivery included
    created_at: datetime


def record(
    conn: Connection,
    *,
    market: str,
    market_date: date,
    kind: str,
    payload: Mapping[str, Any],
    now: datetime,
    run_id: str | None = None,
) -> bool:
    """Record the alert unless (market, market_date, kind) already has one; True when this
    call recorded it."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = (
        dialect.insert(alerts_table)
        .values(
            market=market,
            market_date=market_date,
            kind=kind,
            run_id=run_id,
            payload=dict(payload),
            status=PENDING,
            attempts=0,
            created_at=now,
            next_attempt_at=now,
        )
        .on_conflict_do_nothing(index_elements=["market", "market_date", "kind"])
        .returning(alerts_table.c.id)
    )
    return conn.execute(stmt).first() is not None


def claim_next(conn: Connection, *, now: datetime, lease: timedelta) -> ClaimedAlert | None:
    """The oldest alert due for delivery, moved to `sending` and leased until now + `lease`
    (skipped when another transaction holds it); None when nothing is due."""
    a = alerts_table.c
    due = (
        select(a.id)
        .where(a.status.in_(_DUE), a.next_attempt_at <= now)
        .order_by(a.next_attempt_at, a.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    row = conn.execute(
        update(alerts_table)
        .where(a.id == due)
        .values(status=SENDING, attempts=a.attempts + 1, next_attempt_at=now + lease)
        .returning(
            a.id, a.market, a.market_date, a.kind, a.run_id, a.payload, a.attempts, a.created_at
        )
    ).first()
    return None if row is None else ClaimedAlert(*row)


def mark_sent(conn: Connection, alert_id: int, *, now: datetime) -> None:
    conn.execute(
        update(alerts_table)
        .where(alerts_table.c.id == alert_id)
        .values(status=SENT, sent_at=now, last_error=None)
    )


def mark_failed(conn: Connection, alert_id: int, *, error: str, retry_at: datetime | None) -> None:
    """A delivery that did not get through: retried from `retry_at`, or abandoned (None)."""
    values: dict[str, Any] = {"last_error": error[:500]}
    if retry_at is None:
        values["status"] = ABANDONED
    else:
        values.update(status=FAILED, next_attempt_at=retry_at)
    conn.execute(update(alerts_table).where(alerts_table.c.id == alert_id).values(values))


def alerts_of(conn: Connection, *, market: str | None = None) -> list[dict[str, Any]]:
    """Every recorded alert (of `market`), oldest first, as dicts."""
    a = alerts_table.c
    query = select(alerts_table).order_by(a.created_at, a.id)
    if market is not None:
        query = query.where(a.market == market)
    return [dict(row) for row in conn.execute(query).mappings()]
