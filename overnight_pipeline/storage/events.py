"""The audit trail of a calculation: its events (`calculation_events`, docs/EVENTS.md), the
snapshots they reference (`calculation_snapshots`), and the reads that replay them.

Every function takes a `Connection` and never commits: a batch's events are written in the
transaction of its results (`storage.results`), so a retried or re-executed step resumes
after the last committed batch without duplicating anything.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, select

from overnight_pipeline.core.snapshots import SnapshotTexts
from overnight_pipeline.storage.bulk import (
    Fields,
    Rows,
    binary_date,
    binary_jsonb,
    binary_text,
    binary_timestamptz,
    binary_uuid,
    upsert,
    upsert_prepared,
)
from overnight_pipeline.storage.db import dumps_json
from overnight_pipeline.storage.dialect import CHUNK, among, among_literal, id_chunks, id_text
from overnight_pipeline.storage.models import (
    calculation_events_table,
    calculation_snapshots_table,
)
from overnight_pipeline.storage.partitions import month_of


def users_with_event(
    conn: Connection, *, correlation_id: uuid.UUID, event_type: str
) -> set[uuid.UUID]:
    e = calculation_events_table
    return set(
        conn.scalars(
            select(e.c.user_id).where(
                e.c.correlation_id == correlation_id, e.c.event_type == event_type
            )
        )
    )


EVENT_COLUMNS = (
    "correlation_id",
    "user_id",
    "event_type",
    "payload",
    "created_at",
    "calculated_at",
)
_FIELD_COUNT = len(EVENT_COLUMNS).to_bytes(2, "big")
_JSONB_LENGTH = struct.Struct(">i").pack


def event_rows(
    dialect: str,
    events: Sequence[tuple[uuid.UUID, Any, str, Any]],
    *,
    at: datetime,
    calculated_at: datetime,
) -> Rows:
    """(correlation id, user id, type, payload as JSON text or a dict) events written `at`,
    of calculations started `calculated_at` (their partition key, `storage.partitions`).

    PostgreSQL: binary COPY rows made in one pass."""
    if dialect != "postgresql":
        return Rows(
            calculation_events_table,
            EVENT_COLUMNS,
            rows=[
                (
                    cid,
                    uuid.UUID(str(uid)),
                    kind,
                    orjson.loads(p) if isinstance(p, str) else orjson.loads(dumps_json(p)),
                    at,
                    calculated_at,
                )
                for cid, uid, kind, p in events
            ],
        )
    # COPY's binary format: no escaping scan of each document here, no line scan there; the
    # fields that repeat (a batch's correlation id, each user's id for its four events, the
    # four types) are made once each.
    tail = binary_timestamptz(at) + binary_timestamptz(calculated_at)
    ids = Fields(binary_uuid).__getitem__
    kinds = Fields(binary_text).__getitem__
    return Rows(
        calculation_events_table,
        EVENT_COLUMNS,
        binary=[
            b"".join(
                (
                    _FIELD_COUNT,
                    ids(cid),
                    ids(uid),
                    kinds(kind),
                    binary_jsonb(p if isinstance(p, str) else dumps_json(p)),
                    tail,
                )
            )
            for cid, uid, kind, p in events
        ],
    )


@dataclass
class EventColumns:
    """A batch's events of one calculation as columns: per user, its id (text), the types of
    its events and their payloads as JSON text, in order; what `steps.batch_results` adds a
    user at a time without an event tuple each."""

    correlation_id: uuid.UUID
    user_ids: list[str] = field(default_factory=list)
    kinds: list[tuple[str, ...]] = field(default_factory=list)
    payloads: list[tuple[str, ...]] = field(default_factory=list)

    def add(self, user_id: str, kinds: tuple[str, ...], payloads: tuple[str, ...]) -> None:
        self.user_ids.append(user_id)
        self.kinds.append(kinds)
        self.payloads.append(payloads)

    def __iter__(self) -> Iterator[tuple[uuid.UUID, str, str, str]]:
        """The events as `event_rows` takes them."""
        cid = self.correlation_id
        for uid, kinds, payloads in zip(self.user_ids, self.kinds, self.payloads, strict=True):
            for kind, payload in zip(kinds, payloads, strict=True):
                yield cid, uid, kind, payload


def batch_event_rows(
    dialect: str, events: EventColumns, *, at: datetime, calculated_at: datetime
) -> Rows:
    """`event_rows` of a batch's events as columns: the same rows, the fields every event of
    a user shares (the correlation id, the user's id) made once a user, each type's once."""
    if dialect != "postgresql":
        return event_rows(dialect, list(events), at=at, calculated_at=calculated_at)
    tail = binary_timestamptz(at) + binary_timestamptz(calculated_at)
    head = _FIELD_COUNT + binary_uuid(events.correlation_id)
    # A jsonb field is its length, its format version (1) and the text (`bulk.binary_jsonb`).
    kinds = Fields(binary_text).__getitem__
    binary: list[bytes] = []
    add = binary.append
    join, length = b"".join, _JSONB_LENGTH
    for uid, types, payloads in zip(events.user_ids, events.kinds, events.payloads, strict=True):
        user = head + binary_uuid(uid)
        for kind, payload in zip(types, payloads, strict=True):
            data = payload.encode()
            add(join((user, kinds(kind), length(len(data) + 1), b"\x01", data, tail)))
    return Rows(calculation_events_table, EVENT_COLUMNS, binary=binary)


SNAPSHOT_COLUMNS = ("hash", "month", "kind", "payload")
_SNAPSHOT_FIELD_COUNT = len(SNAPSHOT_COLUMNS).to_bytes(2, "big")


def insert_snapshot(
    conn: Connection, *, key: str, kind: str, payload: dict[str, Any], calculated_at: datetime
) -> None:
    """Store a snapshot once per month of the calculations that reference it."""
    insert_snapshots(conn, kind=kind, payloads={key: payload}, calculated_at=calculated_at)


def insert_snapshots(
    conn: Connection, *, kind: str, payloads: Mapping[str, Any], calculated_at: datetime
) -> int:
    """Store the snapshots `payloads` (hash → payload) in the month of `calculated_at` unless
    they are there: a snapshot is immutable and keyed by its content's hash, so an existing
    row (another shard's, an earlier night's of the month) is the same and is left alone.
    Those already there are looked up first (one query), so a night that reuses the month's
    snapshots writes nothing. Returns how many were inserted."""
    t = calculation_snapshots_table
    month = month_of(calculated_at)
    wanted = sorted(payloads)
    present: set[str] = set()
    dialect = conn.dialect.name
    for chunk in id_chunks(conn, wanted, CHUNK):  # hashes: hex digests, no quoting needed
        present.update(
            conn.scalars(
                select(t.c.hash).where(t.c.month == month, among_literal(t.c.hash, chunk, dialect))
            )
        )
    missing = [key for key in wanted if key not in present]
    if missing and dialect == "postgresql":
        # One COPY into a staging table and one INSERT … ON CONFLICT DO NOTHING (another
        # shard may insert the same snapshot meanwhile), not a statement per row: ≈ 130 µs a
        # row of the backend's CPU through executemany on a month's first night. Payloads
        # kept as their canonical text (`SnapshotTexts`) are sent as that text, not parsed
        # and encoded again (the same bytes: orjson's compact text of the same values).
        texts = payloads.texts if isinstance(payloads, SnapshotTexts) else None
        kind_field, month_field = binary_text(kind), binary_date(month)
        prepared = Rows(
            t,
            SNAPSHOT_COLUMNS,
            binary=[
                b"".join(
                    (
                        _SNAPSHOT_FIELD_COUNT,
                        binary_text(key),
                        month_field,
                        kind_field,
                        binary_text(texts[key] if texts is not None else dumps_json(payloads[key])),
                    )
                )
                for key in missing
            ],
        )
        upsert_prepared(conn, prepared, key=["hash", "month"], update=[])
    elif missing:
        rows = [
            {"hash": key, "month": month, "kind": kind, "payload": payloads[key]} for key in missing
        ]
        upsert(conn, t, rows, key=["hash", "month"], update=[])
    return len(missing)


def snapshots(conn: Connection, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """hash → payload of the snapshots `keys` (those that exist; the copies a hash has in
    several months are the same content)."""
    t = calculation_snapshots_table
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    return dict(conn.execute(select(t.c.hash, t.c.payload).where(t.c.hash.in_(wanted))).all())


def event_payloads(
    conn: Connection,
    *,
    correlation_id: uuid.UUID,
    event_type: str,
    user_ids: Sequence[uuid.UUID],
) -> list[tuple[str, dict[str, Any]]]:
    """(user id as text, payload) of one event type of `user_ids`, by user id: what a replay
    of a sample of a calculation's users reads."""
    e = calculation_events_table
    dialect = conn.dialect.name
    out: list[tuple[str, dict[str, Any]]] = []
    for chunk in id_chunks(conn, user_ids, CHUNK):
        rows = conn.execute(
            select(id_text(e.c.user_id), e.c.payload)
            .where(
                e.c.correlation_id == correlation_id,
                e.c.event_type == event_type,
                among(e.c.user_id, chunk, dialect),
            )
            .order_by(e.c.user_id)
        )
        out.extend((user_id, payload) for user_id, payload in rows)
    return out
