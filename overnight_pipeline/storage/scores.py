"""Each user's current scores: written one row a user into `user_scores` (arrays, one element
per held asset), read one row per user and asset through the view `asset_scores`.

Before issue 25 `asset_scores` was a table of one row per holding: replacing a user's ≈ 30
rows each night (a DELETE, then a COPY, every row's JSON parsed and its primary key checked)
was half of PostgreSQL's CPU of a night (≈ 290 µs a user on a steady night at 20,000 users,
measured per backend). One row a user, upserted, does the same work for the price of one
row. The view keeps the name and the columns: "the current score of user U for asset A".
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from typing import NamedTuple

import numpy as np
import orjson
from sqlalchemy import Column, Connection, Date, Integer, MetaData, String, Table, Uuid

from overnight_pipeline.storage.bulk import (
    UUID_OID,
    UUIDS,
    VARCHAR_OID,
    Fields,
    Rows,
    binary_array,
    binary_date,
    binary_int4,
    binary_text,
    binary_timestamptz,
    binary_uuid,
    upsert_prepared,
)
from overnight_pipeline.storage.models import user_scores_table
from overnight_pipeline.storage.types import Document, ExactDecimal, UTCDateTime

# The view, as a table to select from (it is not in the models' metadata: Alembic creates it).
asset_scores_table = Table(
    "asset_scores",
    MetaData(),
    Column("user_id", Uuid()),
    Column("asset_id", Uuid()),
    Column("market_date", Date()),
    Column("market", String(16)),
    Column("score", ExactDecimal(16, 4)),
    Column("max_possible_score", ExactDecimal(16, 4)),
    Column("criteria_version", Integer()),
    Column("breakdown", Document),
    Column("correlation_id", Uuid()),
    Column("computed_at", UTCDateTime()),
)

COLUMNS = (
    "user_id",
    "market_date",
    "criteria_version",
    "computed_at",
    "correlation_id",
    "asset_ids",
    "markets",
    "scores",
    "max_possible_scores",
    "breakdowns",
)
_FIELD_COUNT = len(COLUMNS).to_bytes(2, "big")
# Staged as text, cast by the upsert: a score's binary numeric costs this process more (a
# look-up per element) than its text costs the server to parse (≈ 6 µs a user a column).
NUMERIC_COLUMNS = ("scores", "max_possible_scores")
# (user id, asset id, market, score, max possible score, breakdown JSON)
ScoreRow = tuple[str, str, str, str, str, str]


class ScoreColumns(NamedTuple):
    """The same rows as columns (one entry per holding): what a batch has at hand, without a
    tuple per holding."""

    user_ids: Sequence[str]
    asset_ids: Sequence[str]
    markets: Sequence[str]
    scores: Sequence[str]
    maxima: Sequence[str]
    summaries: Sequence[str]


def _grouped(
    users: Iterable[str], columns: ScoreColumns
) -> dict[str, list[tuple[Sequence[str], ...]]]:
    """Each user's rows, in their order, as slices of the five columns after the user id
    (one slice per run of the user's rows: a user's rows usually come together)."""
    by_user: dict[str, list[tuple[Sequence[str], ...]]] = {u: [] for u in users}
    user_ids = columns.user_ids
    n = len(user_ids)
    if not n:
        return by_user
    ids = np.empty(n, dtype=object)
    ids[:] = user_ids
    starts = [0, *(np.flatnonzero(ids[1:] != ids[:-1]) + 1).tolist()]
    rest = columns[1:]
    for start, end in zip(starts, [*starts[1:], n], strict=True):
        by_user[user_ids[start]].append(tuple(c[start:end] for c in rest))
    return by_user


def _user_columns(runs: list[tuple[Sequence[str], ...]]) -> tuple[Sequence[str], ...]:
    """A user's five columns from its runs."""
    if len(runs) == 1:
        return runs[0]
    if not runs:
        return ((),) * 5
    return tuple([v for run in runs for v in run[k]] for k in range(5))


def user_score_rows(
    dialect: str,
    rows: Sequence[ScoreRow] | ScoreColumns,
    *,
    versions: Mapping[str, int],
    day: date,
    correlation_id: uuid.UUID,
    computed_at: datetime,
) -> Rows:
    """One `user_scores` row per user of `versions` (user id → criteria version): the user's
    `rows` (one per holding, or the same as `ScoreColumns`), in their order; none for a user
    who holds nothing now."""
    if not isinstance(rows, ScoreColumns):
        rows = ScoreColumns(*zip(*rows, strict=True)) if rows else ScoreColumns(*(((),) * 6))
    grouped = {u: _user_columns(runs) for u, runs in _grouped(versions, rows).items()}
    if dialect == "postgresql":
        # COPY's binary format: the server parses no uuid[] text (≈ 20 µs a user of the
        # staging COPY's CPU; bench/pg_cpu_bench.py). The fields that repeat
        # (asset ids, a user's markets, the batch's columns) are made once.
        date_field = binary_date(day)
        tail = binary_timestamptz(computed_at) + binary_uuid(correlation_id)
        versions_fields = Fields(binary_int4)
        markets: dict[tuple[str, ...], bytes] = {}
        uuids = UUIDS.__getitem__
        binary = []
        for u, (asset_ids, held, scores, maxima, summaries) in grouped.items():
            key = tuple(held)
            market_field = markets.get(key)
            if market_field is None:
                market_field = markets[key] = binary_array(
                    VARCHAR_OID, len(held), b"".join(map(binary_text, held))
                )
            score_text = f"{{{','.join(scores)}}}".encode()
            maxima_text = f"{{{','.join(maxima)}}}".encode()
            breakdowns = ("[" + ",".join(summaries) + "]").encode()
            binary.append(
                b"".join(
                    (
                        _FIELD_COUNT,
                        binary_uuid(u),
                        date_field,
                        versions_fields[versions[u]],
                        tail,
                        binary_array(UUID_OID, len(asset_ids), b"".join(map(uuids, asset_ids))),
                        market_field,
                        binary_text(score_text),
                        binary_text(maxima_text),
                        binary_text(breakdowns),
                    )
                )
            )
        return Rows(user_scores_table, COLUMNS, binary=binary, text_columns=NUMERIC_COLUMNS)
    return Rows(
        user_scores_table,
        COLUMNS,
        rows=[
            (
                uuid.UUID(u),
                day,
                versions[u],
                computed_at,
                correlation_id,
                [uuid.UUID(a).hex for a in asset_ids],
                list(held),
                list(scores),
                list(maxima),
                [orjson.loads(b) for b in summaries],
            )
            for u, (asset_ids, held, scores, maxima, summaries) in grouped.items()
        ],
    )


def write_scores(conn: Connection, prepared: Rows) -> None:
    """Each user's row becomes the new one, unless the stored row is of a later market date
    (this is a backfill of an older date: the newer scores stay)."""
    update = [c for c in COLUMNS if c != "user_id"]
    upsert_prepared(conn, prepared, key=["user_id"], update=update, newer="market_date")
