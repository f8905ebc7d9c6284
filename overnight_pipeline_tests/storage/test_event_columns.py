"""A batch's events as columns (`storage.events.EventColumns`, what the shard step writes)
give the rows `event_rows` makes of the same events as tuples, on both dialects; snapshots
kept as text are stored as their payloads."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson
from sqlalchemy import Connection

from overnight_pipeline.core import audit
from overnight_pipeline.core.snapshots import SnapshotTexts, snapshot_hash
from overnight_pipeline.storage.events import (
    EventColumns,
    batch_event_rows,
    event_rows,
    insert_snapshots,
    snapshots,
)
from overnight_pipeline.storage.partitions import ensure_months

AT = datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=UTC)
CALCULATED = datetime(2026, 11, 28, 2, tzinfo=UTC)


def _columns() -> EventColumns:
    events = EventColumns(uuid.UUID(int=25))
    odd = orjson.dumps({"name": 'a\tb\nc\\d"e', "list": ["\r", "é"]}).decode()
    events.add(str(uuid.UUID(int=1)), audit.VALUED_EVENTS, ('{"a":1}', odd, "{}", "[]"))
    events.add(str(uuid.UUID(int=2)), audit.UNVALUED_EVENTS, ('{"b":null}', '{"c":"é"}'))
    events.add(str(uuid.UUID(int=3)), audit.VALUED_EVENTS, ("1", "2", "3", "4"))
    return events


def test_event_columns_are_the_events_in_order() -> None:
    events = _columns()
    listed = list(events)
    assert [(uid[-1], kind) for _, uid, kind, _ in listed] == [
        ("1", "CALC_STARTED"),
        ("1", "INPUTS_CAPTURED"),
        ("1", "SCORES_COMPUTED"),
        ("1", "CALC_COMPLETED"),
        ("2", "CALC_STARTED"),
        ("2", "CALC_COMPLETED"),
        *(("3", kind) for kind in audit.EVENT_TYPES),
    ]
    assert {cid for cid, *_ in listed} == {uuid.UUID(int=25)}


def test_batch_event_rows_are_event_rows_of_the_same_events() -> None:
    events = _columns()
    for dialect in ("postgresql", "sqlite"):
        rows = batch_event_rows(dialect, events, at=AT, calculated_at=CALCULATED)
        expected = event_rows(dialect, list(events), at=AT, calculated_at=CALCULATED)
        assert rows == expected
        assert (rows.binary is not None) == (dialect == "postgresql")
    empty = EventColumns(uuid.UUID(int=25))
    assert batch_event_rows("postgresql", empty, at=AT, calculated_at=CALCULATED).binary == []


def test_snapshots_kept_as_text_are_stored_as_their_payloads_once(db_conn: Connection) -> None:
    """`insert_snapshots` sends a `SnapshotTexts` payload as its kept text (PostgreSQL) or
    parsed (SQLite): either way the stored payload is the snapshot's, and a second call for
    the same month inserts nothing."""
    payloads = [
        {"rules": [{"id": "r1", "points": 3, "value": "1.50", "metric": "pe 'x' \"y\" é"}]},
        {"rules": []},
    ]
    texts = SnapshotTexts(
        {snapshot_hash(p): orjson.dumps(p, option=orjson.OPT_SORT_KEYS).decode() for p in payloads}
    )
    ensure_months(db_conn, [CALCULATED])
    assert insert_snapshots(db_conn, kind="criteria", payloads=texts, calculated_at=CALCULATED) == 2
    assert snapshots(db_conn, texts) == {snapshot_hash(p): p for p in payloads}
    assert insert_snapshots(db_conn, kind="criteria", payloads=texts, calculated_at=CALCULATED) == 0
