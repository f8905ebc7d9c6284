"""The asset-X audit index (`calculation_assets`) a calculation writes beside its events, and
the reads of the current scores (`asset_scores`, written by `storage.scores`) and of the
recommendation rows (written by `storage.recommendations`) that the cache step and a replay
compare.

Writes use COPY on PostgreSQL (`bulk.Rows`). Every function takes a `Connection` and never
commits: a batch is one transaction, so a retried or re-executed step resumes after the
last committed batch without duplicating anything.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, Text, cast, select
from sqlalchemy.sql.elements import ColumnElement

from overnight_pipeline.storage.bulk import (
    NUMERIC_OID,
    NUMERICS,
    UUID_OID,
    UUIDS,
    Rows,
    binary_array,
    binary_int2,
    binary_timestamptz,
    binary_uuid,
)
from overnight_pipeline.storage.dialect import CHUNK, among, id_chunks, id_text
from overnight_pipeline.storage.models import calculation_assets_table, recommendations_table
from overnight_pipeline.storage.scores import asset_scores_table

CALCULATION_ASSET_COLUMNS = (
    "asset_id",
    "correlation_id",
    "calculated_at",
    "bucket",
    "user_ids",
    "scores",
)
_FIELD_COUNT = len(CALCULATION_ASSET_COLUMNS).to_bytes(2, "big")
BUCKETS = 16
"""User buckets of the asset-X index: the first hex digit of the user id (`bucket_of`)."""
ROW_USERS = 100
"""The most users one `calculation_assets` row holds: ≈ 28 bytes each, ≤ 2.9 KB a row.
PostgreSQL compresses a row's arrays past 2,032 bytes (pglz: the scores shrink), in the
row, never out of line into TOAST: 774 bytes per user-night at 20,000 users, against 898
with at most 64 a row (docs/PERFORMANCE.md, "The asset-X index as arrays")."""


def bucket_of(user_id: str | uuid.UUID) -> int:
    """The bucket (0..15) of a user in the asset-X index: the first hex digit of its id,
    a function of the id alone. Batches take the users sorted by id, so a batch's rows fall
    in one or two buckets whatever the batch size and shard count (docs/PERFORMANCE.md,
    "The asset-X index as arrays")."""
    return int(str(user_id)[0], 16)


def _by_bucket(
    rows: Sequence[tuple[str, str, str]],
    user: Callable[[str], Any] = str,
    score: Callable[[str], Any] = str,
) -> dict[str, dict[str, tuple[list[Any], list[Any]]]]:
    """(asset id, user id, score) → first hex digit of the user id → asset id → (users,
    scores), each user id as `user` makes it (once for its run of rows: a batch's rows come
    user by user) and each score as `score` makes it (`bulk.binary_uuid` and
    `bulk.NUMERICS` for binary COPY). The batch's users come sorted by id: the digit changes
    rarely, and a dict per digit spares a tuple key per entry (≈ 370 ns an entry instead of
    ≈ 700)."""
    by_digit: dict[str, dict[str, tuple[list[Any], list[Any]]]] = {}
    last_user, last, per_asset = "", "", by_digit.setdefault("", {})
    field: Any = None
    for a, u, sc in rows:
        if u != last_user:
            last_user, field = u, user(u)
            if u[0] != last:
                last = u[0]
                per_asset = by_digit.setdefault(last, {})
        found = per_asset.get(a)
        if found is None:
            per_asset[a] = found = ([], [])
        found[0].append(field)
        found[1].append(score(sc))
    del by_digit[""]
    return by_digit


def _parts(
    by_digit: dict[str, dict[str, tuple[list[Any], list[Any]]]],
) -> list[tuple[str, int, list[Any], list[Any]]]:
    """(asset id, bucket, users, scores) of each row: an asset's users of a bucket, at most
    `ROW_USERS` a row."""
    return [
        (a, int(digit, 16), users, scores)
        if len(users) <= ROW_USERS
        else (a, int(digit, 16), users[at : at + ROW_USERS], scores[at : at + ROW_USERS])
        for digit, per_asset in by_digit.items()
        for a, (users, scores) in per_asset.items()
        for at in range(0, len(users), ROW_USERS)
    ]


def calculation_asset_rows(
    dialect: str,
    rows: Sequence[tuple[str, str, str]],
    *,
    correlation_id: uuid.UUID,
    calculated_at: datetime,
) -> Rows:
    """The asset-X audit index from (asset id, user id, score) as text: one row per asset
    and user bucket (and per `ROW_USERS` users) holding the users and their scores as
    parallel arrays; on SQLite, JSON arrays of the ids' hex digits and the scores' text."""
    if dialect == "postgresql":
        # COPY's binary format: the server parses no uuid[] or numeric[] text (≈ 30 µs a user
        # of the COPY's CPU; bench/pg_cpu_bench.py).
        head = binary_uuid(correlation_id) + binary_timestamptz(calculated_at)
        uuids = UUIDS.__getitem__
        buckets = [binary_int2(b) for b in range(BUCKETS)]
        return Rows(
            calculation_assets_table,
            CALCULATION_ASSET_COLUMNS,
            binary=[
                b"".join(
                    (
                        _FIELD_COUNT,
                        uuids(a),
                        head,
                        buckets[bucket],
                        binary_array(UUID_OID, len(users), b"".join(users)),
                        binary_array(NUMERIC_OID, len(scores), b"".join(scores)),
                    )
                )
                for a, bucket, users, scores in _parts(
                    _by_bucket(rows, binary_uuid, NUMERICS.__getitem__)
                )
            ],
        )
    parts = _parts(_by_bucket(rows))
    return Rows(
        calculation_assets_table,
        CALCULATION_ASSET_COLUMNS,
        rows=[
            (
                uuid.UUID(a),
                correlation_id,
                calculated_at,
                bucket,
                [uuid.UUID(u).hex for u in users],
                scores,
            )
            for a, bucket, users, scores in parts
        ],
    )


def recommendations_for(
    conn: Connection, *, user_ids: Sequence[uuid.UUID], day: date, as_text: bool = False
) -> list[Any]:
    """The persisted rows of `user_ids` on `day` (by primary key); with `as_text`, the two
    documents as the JSON text the database holds (for the cache: no parse and re-encode,
    much of the cache step's time; docs/PERFORMANCE.md, "Scale-out")."""
    r = recommendations_table
    dialect = conn.dialect.name
    payload: ColumnElement[Any] = r.c.payload
    portfolio: ColumnElement[Any] = r.c.portfolio
    if as_text:
        payload = cast(payload, Text).label("payload")
        portfolio = cast(portfolio, Text).label("portfolio")
    out: list[Any] = []
    for chunk in id_chunks(conn, user_ids, CHUNK):
        out.extend(
            conn.execute(
                select(
                    r.c.user_id,
                    r.c.market_date,
                    r.c.generated_at,
                    r.c.total_investable,
                    r.c.correlation_id,
                    payload,
                    portfolio,
                ).where(among(r.c.user_id, chunk, dialect), r.c.market_date == day)
            )
        )
    return out


# Replay (a sample of a calculation's users) ------------------------------------------------


def users_with_recommendation(
    conn: Connection, *, correlation_id: uuid.UUID, day: date
) -> set[str]:
    """Users whose persisted recommendation row on `day` is the calculation's."""
    r = recommendations_table
    return {
        str(u)
        for u in conn.scalars(
            select(r.c.user_id).where(r.c.correlation_id == correlation_id, r.c.market_date == day)
        )
    }


def scores_of(
    conn: Connection, *, user_ids: Sequence[uuid.UUID]
) -> dict[str, tuple[set[uuid.UUID], dict[str, tuple[Decimal, Decimal]]]]:
    """user id → (the calculations its rows are from, asset id → (score, max possible
    score)): each user's current rows in `asset_scores`."""
    s = asset_scores_table
    dialect = conn.dialect.name
    out: dict[str, tuple[set[uuid.UUID], dict[str, tuple[Decimal, Decimal]]]] = {}
    for chunk in id_chunks(conn, user_ids, CHUNK):
        rows = conn.execute(
            select(
                id_text(s.c.user_id),
                id_text(s.c.asset_id),
                s.c.score,
                s.c.max_possible_score,
                s.c.correlation_id,
            ).where(among(s.c.user_id, chunk, dialect))
        )
        for user_id, asset_id, score, top, cid in rows:
            found = out.setdefault(user_id, (set(), {}))
            found[0].add(cid)
            found[1][asset_id] = (score, top)
    return out
