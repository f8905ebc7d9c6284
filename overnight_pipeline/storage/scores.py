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
    Rows,
    copy_escaped,
    copy_escaped_json,
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


def _array_text(value: str) -> str:
    """An element of a PostgreSQL text array literal, quoted."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


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
        head = f"\t{day.isoformat()}\t"
        tail = f"\t{computed_at.isoformat()}\t{correlation_id}\t"
        # A user's markets are mostly the same few: their array's COPY text made once each.
        markets: dict[tuple[str, ...], str] = {}
        lines = []
        for u, (asset_ids, held, scores, maxima, summaries) in grouped.items():
            key = tuple(held)
            market_text = markets.get(key)
            if market_text is None:
                market_text = markets[key] = copy_escaped(
                    "{" + ",".join(map(_array_text, held)) + "}"
                )
            lines.append(
                f"{u}{head}{versions[u]}{tail}{{{','.join(asset_ids)}}}\t{market_text}"
                f"\t{{{','.join(scores)}}}\t{{{','.join(maxima)}}}\t"
                + copy_escaped_json("[" + ",".join(summaries) + "]")
                + "\n"
            )
        return Rows(user_scores_table, COLUMNS, lines=lines)
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
