"""The `recommendations` rows a calculation writes: one per (user, market-date), replaced by a
newer calculation, never by an older result written late.

On PostgreSQL a batch's rows go by COPY into a staging table and one set-based upsert
(`bulk.upsert_lines`), formatted as COPY text on the computing thread: the upsert through
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
    Rows,
    copy_escaped,
    copy_escaped_json,
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
_NULL = "\\N"  # COPY text's null


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
    """The rows made ready for `write_recommendations`: COPY text on PostgreSQL."""
    if dialect == "postgresql":
        return Rows(
            recommendations_table,
            COLUMNS,
            lines=[
                f"{r.user_id}\t{r.market_date.isoformat()}\t{copy_escaped(r.market)}\t"
                f"{r.correlation_id}\t{r.generated_at.isoformat()}\t"
                f"{copy_escaped(r.base_currency)}\t{r.total_investable:f}\t"
                f"{_NULL if r.criteria_version is None else r.criteria_version}\t"
                f"{copy_escaped_json(r.payload.decode())}\t"
                f"{copy_escaped_json(r.portfolio.decode())}\n"
                for r in rows
            ],
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
