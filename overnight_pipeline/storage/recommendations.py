"""The `recommendations` rows a calculation writes: one per (user, market-date), replaced by a
newer calculation, never by an older result written late.

On PostgreSQL a batch's rows go by COPY into a staging table and one set-based upsert
(`bulk.upsert_lines`), formatted as binary COPY rows on the computing thread: the upsert through
SQLAlchemy's `executemany` was one statement per row (≈ 11.7 CPU-s of PostgreSQL and ≈ 10 of
Python per 100,000 users, issue 25's profile). Elsewhere (SQLite, the demo) the same upsert
with parameters. The documents arrive as the JSON bytes the cache serves
(`core.cache_documents`).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

import orjson
from sqlalchemy import Connection, select

from overnight_pipeline.storage.bulk import (
    BINARY_NULL,
    Fields,
    Rows,
    binary_date,
    binary_int4,
    binary_text,
    binary_timestamptz,
    binary_uuid,
    upsert_prepared,
)
from overnight_pipeline.storage.dialect import CHUNK, among, id_chunks
from overnight_pipeline.storage.models import recommendations_table

COLUMNS = (
    "user_id",
    "market_date",
    "market",
    "correlation_id",
    "generated_at",
    "base_currency",
    "total_investable",
    "criteria_version",
    "payload",
    "portfolio",
)
KEY = ("user_id", "market_date")
# `total_investable` as the column gives it back (NUMERIC(20, 4)).
TOTAL_SCALE = Decimal("0.0001")
_FIELD_COUNT = len(COLUMNS).to_bytes(2, "big")


@dataclass(frozen=True)
class RecommendationRow:
    """One user's row: both documents as JSON bytes."""

    user_id: uuid.UUID
    market_date: date
    market: str
    correlation_id: uuid.UUID
    generated_at: datetime
    base_currency: str
    total_investable: Decimal
    criteria_version: int | None
    payload: bytes
    portfolio: bytes


def recommendation_rows(dialect: str, rows: Sequence[RecommendationRow]) -> Rows:
    """The rows made ready for `write_recommendations`: binary COPY rows on PostgreSQL."""
    if dialect == "postgresql":
        # COPY's binary format: the documents go as the bytes they are (staged as text), with
        # no decoding or escaping scan here and no line scan there.
        fields = Fields(_field).__getitem__
        return Rows(
            recommendations_table,
            COLUMNS,
            binary=[
                b"".join(
                    (
                        _FIELD_COUNT,
                        binary_uuid(r.user_id),
                        fields(r.market_date),
                        fields(r.market),
                        fields(r.correlation_id),
                        fields(r.generated_at),
                        fields(r.base_currency),
                        binary_text(f"{r.total_investable:f}"),
                        fields(r.criteria_version),
                        binary_text(r.payload),
                        binary_text(r.portfolio),
                    )
                )
                for r in rows
            ],
            text_columns=("total_investable",),
        )
    return Rows(
        recommendations_table,
        COLUMNS,
        rows=[
            (
                r.user_id,
                r.market_date,
                r.market,
                r.correlation_id,
                r.generated_at,
                r.base_currency,
                r.total_investable,
                r.criteria_version,
                orjson.loads(r.payload),
                orjson.loads(r.portfolio),
            )
            for r in rows
        ],
    )


def _field(value: str | date | datetime | uuid.UUID | int | None) -> bytes:
    """The binary field of one of the values a batch's rows share (its date, market, run,
    time, currency, criteria version)."""
    if value is None:
        return BINARY_NULL
    if isinstance(value, datetime):
        return binary_timestamptz(value)
    if isinstance(value, date):
        return binary_date(value)
    if isinstance(value, uuid.UUID):
        return binary_uuid(value)
    if isinstance(value, int):
        return binary_int4(value)
    return binary_text(value)


def write_recommendations(conn: Connection, prepared: Rows) -> None:
    """Upsert the rows: a new calculation replaces the stored row of (user, market_date)
    unless the stored row was generated later (a nightly batch and a same-day
    recalculation of the same user and date, finishing in either order: the result of the
    newer inputs stays)."""
    update = [c for c in COLUMNS if c not in KEY]
    upsert_prepared(conn, prepared, key=KEY, update=update, newer="generated_at")


def row_versions(
    conn: Connection, *, user_ids: Sequence[uuid.UUID], day: date
) -> list[tuple[uuid.UUID, datetime, uuid.UUID]]:
    """(user id, generated_at, correlation id) of the persisted rows of `user_ids` on `day`,
    without their documents (by primary key): what the cache step compares with Redis."""
    r = recommendations_table
    dialect = conn.dialect.name
    out: list[tuple[uuid.UUID, datetime, uuid.UUID]] = []
    for chunk in id_chunks(conn, user_ids, CHUNK):
        rows = conn.execute(
            select(r.c.user_id, r.c.generated_at, r.c.correlation_id).where(
                among(r.c.user_id, chunk, dialect), r.c.market_date == day
            )
        )
        out.extend((u, g, c) for u, g, c in rows)
    return out
