"""Revision 0010 (issue 25) with data: `calculation_events` loses its index on (user_id,
created_at) and gets it back, its rows untouched and its unique key kept, on PostgreSQL and
SQLite."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import Engine, inspect, select
from sqlalchemy.exc import IntegrityError

from overnight_pipeline.storage.db import downgrade, make_engine, migrate
from overnight_pipeline.storage.models import calculation_events_table as events
from overnight_pipeline.storage.partitions import ensure_months

INDEX = "ix_calculation_events_user_created"
TYPES = ("CALC_STARTED", "INPUTS_CAPTURED", "SCORES_COMPUTED", "CALC_COMPLETED")


def _rows() -> list[dict[str, object]]:
    """Four events of 30 users in each of two calculations, a month apart."""
    t0 = datetime(2026, 11, 30, 23, 0, tzinfo=UTC)
    out: list[dict[str, object]] = []
    for at in (t0, t0 + timedelta(days=2)):
        cid = uuid.uuid4()
        for n in range(30):
            user = uuid.UUID(int=n + 1)
            for kind in TYPES:
                out.append(
                    {
                        "calculated_at": at,
                        "created_at": at + timedelta(seconds=n),
                        "correlation_id": cid,
                        "user_id": user,
                        "event_type": kind,
                        "payload": {"n": n, "kind": kind},
                    }
                )
    return out


def _stored(engine: Engine) -> list[tuple[object, ...]]:
    c = events.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(c.correlation_id, c.user_id, c.event_type, c.payload, c.created_at).order_by(
                c.correlation_id, c.user_id, c.event_type
            )
        )
        return [tuple(r) for r in rows]


def _indexes(engine: Engine) -> set[str]:
    return {str(i["name"]) for i in inspect(engine).get_indexes("calculation_events")}


def test_0010_drops_the_user_index_and_keeps_the_events(fresh_url: str) -> None:
    migrate(fresh_url, "0009")
    engine = make_engine(fresh_url)
    try:
        rows = _rows()
        with engine.begin() as conn:
            ensure_months(conn, [r["calculated_at"] for r in rows])  # type: ignore[misc]
            conn.execute(events.insert(), rows)
        assert INDEX in _indexes(engine)
        before = _stored(engine)
        assert len(before) == len(rows)
        engine.dispose()

        migrate(fresh_url, "0010")
        engine = make_engine(fresh_url)
        assert INDEX not in _indexes(engine)
        assert _stored(engine) == before
        with pytest.raises(IntegrityError), engine.begin() as conn:  # the unique key stays
            conn.execute(events.insert(), rows[:1])
        engine.dispose()

        downgrade(fresh_url, "0009")
        engine = make_engine(fresh_url)
        assert INDEX in _indexes(engine)
        assert _stored(engine) == before
    finally:
        engine.dispose()
