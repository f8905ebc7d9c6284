"""lean output: asset_scores without foreign keys, the asset-X index as arrays

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07

Issue 25, item 1:
- `asset_scores` loses its two foreign keys (users, assets): their checks were ≈ 80 % of
  the table's COPY in PostgreSQL. `storage.seeding.delete_users` deletes a user's scores
  with the user; assets are never deleted.
- `calculation_assets` becomes one row per (asset, calculation, user bucket, written batch)
  holding parallel arrays of user ids and scores (PostgreSQL uuid[] and numeric(16,4)[];
  SQLite JSON arrays of the ids' 32 hex digits and the scores' text). The bucket is the
  first hex digit of the user id; a row holds at most 100 users. Indexes (asset_id,
  calculated_at, correlation_id, bucket) for the operator's query and (asset_id, bucket,
  calculated_at, correlation_id) for a user's; SQLite keeps its index on `calculated_at` for the batched
  retention.

The existing rows are converted, on PostgreSQL one monthly partition at a time (each old
month is dropped once converted, the indexes built at the end), on SQLite in one
statement. Downgrade converts the arrays back into one row per (asset, calculation, user)
and restores the foreign keys (deleting first any score row of a user or asset gone).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import overnight_pipeline.storage.types as types

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

TABLE = "calculation_assets"
OLD = "calculation_assets_0007_old"
ROW_USERS = 100  # storage.results.ROW_USERS, as of this revision
PART = re.compile(r"^calculation_assets_p(\d{4})_(\d{2})$")
FKS = (
    ("fk_asset_scores_user_id_users", "users", "user_id", "CASCADE"),
    ("fk_asset_scores_asset_id_assets", "assets", "asset_id", None),
)
# SQLite: the bucket from the 32 hex digits `Uuid` stores there.
_SQLITE_BUCKET = "instr('0123456789abcdef', lower(substr(user_id, 1, 1))) - 1"
_PG_BUCKET = "get_byte(uuid_send(user_id), 0) >> 4"


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _stamp() -> types.UTCDateTime:
    return types.UTCDateTime(timezone=True)


def _narrow_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("calculated_at", _stamp(), nullable=False),
        sa.Column("score", types.ExactDecimal(precision=16, scale=4), nullable=False),
    ]


def _array_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("calculated_at", _stamp(), nullable=False),
        sa.Column("bucket", sa.SmallInteger(), nullable=False),
        sa.Column(
            "user_ids",
            postgresql.ARRAY(sa.Uuid()).with_variant(sa.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "scores",
            postgresql.ARRAY(sa.Numeric(16, 4)).with_variant(sa.JSON(), "sqlite"),
            nullable=False,
        ),
    ]


def _narrow_indexes() -> None:
    op.create_index("ix_calculation_assets_asset_newest", TABLE, ["asset_id", "calculated_at"])
    op.create_index("ix_calculation_assets_user_asset", TABLE, ["user_id", "asset_id"])
    if not _postgresql():
        op.create_index("ix_calculation_assets_calculated_at", TABLE, ["calculated_at"])


def _array_indexes() -> None:
    op.create_index(
        "ix_calculation_assets_asset_newest",
        TABLE,
        ["asset_id", "calculated_at", "correlation_id", "bucket"],
    )
    op.create_index(
        "ix_calculation_assets_asset_bucket",
        TABLE,
        ["asset_id", "bucket", "calculated_at", "correlation_id"],
    )
    if not _postgresql():
        op.create_index("ix_calculation_assets_calculated_at", TABLE, ["calculated_at"])


# Old rows → new rows, from the table {old}: PostgreSQL and SQLite spell it apart.
_TO_ARRAYS_PG = (
    "SELECT asset_id, correlation_id, calculated_at, bucket,"
    " array_agg(user_id ORDER BY user_id), array_agg(score ORDER BY user_id)"
    f" FROM (SELECT *, {_PG_BUCKET} AS bucket, (row_number() OVER (PARTITION BY asset_id,"
    f" correlation_id, calculated_at, {_PG_BUCKET} ORDER BY user_id) - 1) / {ROW_USERS} AS part"
    " FROM {old}) narrow"
    " GROUP BY asset_id, correlation_id, calculated_at, bucket, part"
)
_TO_ARRAYS_SQLITE = (
    "SELECT asset_id, correlation_id, calculated_at, bucket,"
    " json_group_array(user_id), json_group_array(score)"
    " FROM (SELECT *, row_number() OVER (PARTITION BY asset_id, correlation_id,"
    f" calculated_at, bucket ORDER BY user_id) - 1 AS n"
    f" FROM (SELECT *, {_SQLITE_BUCKET} AS bucket FROM {{old}}) ORDER BY user_id) narrow"
    f" GROUP BY asset_id, correlation_id, calculated_at, bucket, n / {ROW_USERS}"
)
_TO_NARROW_PG = (
    "SELECT ca.asset_id, ca.correlation_id, e.user_id, ca.calculated_at, e.score"
    " FROM {old} ca, unnest(ca.user_ids, ca.scores) AS e(user_id, score)"
)
_TO_NARROW_SQLITE = (
    "SELECT ca.asset_id, ca.correlation_id, e.value, ca.calculated_at,"
    " json_extract(ca.scores, '$[' || e.key || ']')"
    " FROM {old} ca, json_each(ca.user_ids) AS e"
)
_ARRAY_NAMES = "asset_id, correlation_id, calculated_at, bucket, user_ids, scores"
_NARROW_NAMES = "asset_id, correlation_id, user_id, calculated_at, score"


def _months() -> list[date]:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT child.relname FROM pg_inherits i"
            " JOIN pg_class parent ON parent.oid = i.inhparent"
            " JOIN pg_class child ON child.oid = i.inhrelid WHERE parent.relname = :t"
        ),
        {"t": TABLE},
    )
    found = [PART.match(name) for name in rows.scalars()]
    return sorted(date(int(m[1]), int(m[2]), 1) for m in found if m)


def _next(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _rebuild(
    columns: list[sa.Column[object]],
    indexes: Callable[[], None],
    old_indexes: list[str],
    select: str,
) -> None:
    """Replace `calculation_assets` by a table of `columns` filled from the old one by
    `select` (formatted with the old table's name), month by month on PostgreSQL."""
    for name in old_indexes:
        op.drop_index(name, table_name=TABLE)
    if not _postgresql():
        op.rename_table(TABLE, OLD)
        op.create_table(TABLE, *columns)
        names = _ARRAY_NAMES if len(columns) == 6 else _NARROW_NAMES
        op.execute(f"INSERT INTO {TABLE} ({names}) " + select.format(old=OLD))
        op.drop_table(OLD)
        indexes()
        return
    months = _months()
    op.execute(f"ALTER TABLE {TABLE} RENAME TO {OLD}")
    for month in months:
        op.execute(f"ALTER TABLE {_part(TABLE, month)} RENAME TO {_part(OLD, month)}")
    op.create_table(TABLE, *columns, postgresql_partition_by="RANGE (calculated_at)")
    names = _ARRAY_NAMES if len(columns) == 6 else _NARROW_NAMES
    for month in months:
        op.execute(
            f"CREATE TABLE {_part(TABLE, month)} PARTITION OF {TABLE} FOR VALUES FROM"
            f" ('{month.isoformat()} 00:00:00+00') TO ('{_next(month).isoformat()} 00:00:00+00')"
        )
        op.execute(
            f"INSERT INTO {_part(TABLE, month)} ({names}) " + select.format(old=_part(OLD, month))
        )
        op.execute(f"DROP TABLE {_part(OLD, month)}")
    op.execute(f"DROP TABLE {OLD}")
    indexes()


def _part(table: str, month: date) -> str:
    return f"{table}_p{month.year:04d}_{month.month:02d}"


def upgrade() -> None:
    postgres = _postgresql()
    if postgres:
        for name, _, _, _ in FKS:
            op.drop_constraint(name, "asset_scores", type_="foreignkey")
    else:
        with op.batch_alter_table("asset_scores", schema=None) as batch_op:
            for name, _, _, _ in FKS:
                batch_op.drop_constraint(name, type_="foreignkey")
    old_indexes = ["ix_calculation_assets_asset_newest", "ix_calculation_assets_user_asset"]
    if not postgres:
        old_indexes.append("ix_calculation_assets_calculated_at")
    _rebuild(
        _array_columns(),
        _array_indexes,
        old_indexes,
        _TO_ARRAYS_PG if postgres else _TO_ARRAYS_SQLITE,
    )


def downgrade() -> None:
    postgres = _postgresql()
    old_indexes = ["ix_calculation_assets_asset_newest", "ix_calculation_assets_asset_bucket"]
    if not postgres:
        old_indexes.append("ix_calculation_assets_calculated_at")
    _rebuild(
        _narrow_columns(),
        _narrow_indexes,
        old_indexes,
        _TO_NARROW_PG if postgres else _TO_NARROW_SQLITE,
    )
    # A score row of a user or asset gone since would refuse the keys.
    op.execute("DELETE FROM asset_scores WHERE user_id NOT IN (SELECT id FROM users)")
    op.execute("DELETE FROM asset_scores WHERE asset_id NOT IN (SELECT id FROM assets)")
    if postgres:
        for name, parent, col, ondelete in FKS:
            op.create_foreign_key(name, "asset_scores", parent, [col], ["id"], ondelete=ondelete)
        return
    with op.batch_alter_table("asset_scores", schema=None) as batch_op:
        for name, parent, col, ondelete in FKS:
            batch_op.create_foreign_key(name, parent, [col], ["id"], ondelete=ondelete)
