"""What `overnight seed` writes: the shared asset universe, its synthetic fundamentals, and
synthetic users with their classes, holdings and criteria, in bulk (COPY on PostgreSQL).
Functions never commit: the caller owns the transaction."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from sqlalchemy import Connection, delete, select

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.storage.bulk import copy_rows, upsert
from overnight_pipeline.storage.models import (
    asset_classes_table,
    asset_fundamentals_table,
    assets_table,
    criteria_rules_table,
    criteria_versions_table,
    holdings_table,
    user_scores_table,
    users_table,
)

# The tables a large seed writes with their foreign keys checked once at the end
# (`bulk.foreign_keys_deferred_to_end`).
BULK_TABLES = ("asset_classes", "holdings", "criteria_versions", "criteria_rules")

USER_COLUMNS = ("id", "base_currency", "default_contribution", "active", "created_at", "updated_at")
CLASS_COLUMNS = (
    "id",
    "user_id",
    "name",
    "position",
    "target_min",
    "target_max",
    "max_assets",
    "min_allocation_value",
)
HOLDING_COLUMNS = ("user_id", "asset_id", "asset_class_id", "quantity")
VERSION_COLUMNS = ("id", "user_id", "version", "created_at")
RULE_COLUMNS = (
    "criteria_version_id",
    "position",
    "rule_id",
    "asset_class",
    "metric",
    "operator",
    "value",
    "value2",
    "points",
)


@dataclass
class SeededUsers:
    """Rows of a chunk of synthetic users, one tuple per row in the order of the table's
    columns above."""

    users: list[tuple[Any, ...]] = field(default_factory=list)
    classes: list[tuple[Any, ...]] = field(default_factory=list)
    holdings: list[tuple[Any, ...]] = field(default_factory=list)
    versions: list[tuple[Any, ...]] = field(default_factory=list)
    rules: list[tuple[Any, ...]] = field(default_factory=list)


def store_universe(
    conn: Connection, assets: Sequence[Mapping[str, Any]]
) -> dict[tuple[str, str], uuid.UUID]:
    """Insert the `assets` rows not stored yet (by market and symbol; a stored one is left as
    it is); returns the id of every stored asset by (market, symbol)."""
    upsert(conn, assets_table, assets, key=["market", "symbol"], update=[])
    t = assets_table
    return {(m, s): i for m, s, i in conn.execute(select(t.c.market, t.c.symbol, t.c.id))}


def replace_fundamentals(
    conn: Connection,
    rows: Iterable[Sequence[Any]],
    *,
    day: date,
    asset_ids: Sequence[uuid.UUID],
) -> None:
    """The fundamentals of `asset_ids` on `day` become `rows` (asset id, date, one value per
    metric, source, as_of)."""
    t = asset_fundamentals_table
    conn.execute(delete(t).where(t.c.fundamentals_date == day, t.c.asset_id.in_(asset_ids)))
    copy_rows(conn, t, ["asset_id", "fundamentals_date", *METRICS, "source", "as_of"], rows)


def delete_users(conn: Connection, user_ids: Sequence[uuid.UUID], *, chunk: int) -> None:
    """Delete those of `user_ids` that exist, `chunk` ids per statement: their current scores
    here (`user_scores` has no foreign key, issue 25), their other rows by cascade."""
    u, s = users_table, user_scores_table
    for start in range(0, len(user_ids), chunk):
        part = list(conn.scalars(select(u.c.id).where(u.c.id.in_(user_ids[start : start + chunk]))))
        if part:
            conn.execute(delete(s).where(s.c.user_id.in_(part)))
            conn.execute(delete(u).where(u.c.id.in_(part)))


def write_users(conn: Connection, rows: SeededUsers) -> None:
    """Insert a chunk of synthetic users and their rows."""
    copy_rows(conn, users_table, list(USER_COLUMNS), rows.users)
    copy_rows(conn, asset_classes_table, list(CLASS_COLUMNS), rows.classes)
    copy_rows(conn, holdings_table, list(HOLDING_COLUMNS), rows.holdings)
    copy_rows(conn, criteria_versions_table, list(VERSION_COLUMNS), rows.versions)
    copy_rows(conn, criteria_rules_table, list(RULE_COLUMNS), rows.rules)
