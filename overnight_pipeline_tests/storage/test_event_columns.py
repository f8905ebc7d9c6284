"""A batch's events as columns (`storage.events.EventColumns`, what the shard step writes)
give the rows `event_rows` makes of the same events as tuples, on both dialects."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import orjson

from overnight_pipeline.core import audit
from overnight_pipeline.storage.events import EventColumns, batch_event_rows, event_rows

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
