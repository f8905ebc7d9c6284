"""audit storage: shared snapshots, current scores, the asset-X index's own indexes

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04

- `calculation_snapshots`: what a calculation's users share (market data as the run used
  it), stored once, immutable, content-addressed; new `INPUTS_CAPTURED` events reference
  it. Existing events stay as they are: self-contained, replayed as before.
- `asset_scores` keeps each user's current scores: key (user_id, asset_id); rows of a
  user's older market dates are deleted (their history is in the `SCORES_COMPUTED`
  events).
- `calculation_assets` keeps the indexes of its two queries and retention's: the primary
  key (asset_id, correlation_id, user_id), which no query used, and the per-user index
  (user_id, asset_id, created_at) go; (user_id, asset_id) replaces the latter.

Downgrade restores the schema (the current scores stay the only scores); events written
after the upgrade reference snapshots and are only replayable by this revision's code.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import overnight_pipeline.storage.types

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "calculation_snapshots",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", overnight_pipeline.storage.types.Document, nullable=False),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint("kind IN ('market')", name=op.f("ck_calculation_snapshots_known_kind")),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_calculation_snapshots")),
    )
    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,):
        op.execute("ALTER TABLE calculation_snapshots ALTER COLUMN payload SET COMPRESSION lz4")

    # Each user's newest market date only: the current scores.
    op.execute(
        "DELETE FROM asset_scores WHERE market_date < (SELECT max(s.market_date)"
        " FROM asset_scores s WHERE s.user_id = asset_scores.user_id)"
    )
    with op.batch_alter_table("asset_scores", schema=None) as batch_op:
        batch_op.drop_constraint("pk_asset_scores", type_="primary")
        batch_op.create_primary_key("pk_asset_scores", ["user_id", "asset_id"])

    with op.batch_alter_table("calculation_assets", schema=None) as batch_op:
        batch_op.drop_index("ix_calculation_assets_user_asset_newest")
        batch_op.drop_constraint("pk_calculation_assets", type_="primary")
        batch_op.create_index(
            "ix_calculation_assets_user_asset", ["user_id", "asset_id"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("calculation_assets", schema=None) as batch_op:
        batch_op.drop_index("ix_calculation_assets_user_asset")
        batch_op.create_primary_key(
            "pk_calculation_assets", ["asset_id", "correlation_id", "user_id"]
        )
        batch_op.create_index(
            "ix_calculation_assets_user_asset_newest",
            ["user_id", "asset_id", "created_at"],
            unique=False,
        )
    with op.batch_alter_table("asset_scores", schema=None) as batch_op:
        batch_op.drop_constraint("pk_asset_scores", type_="primary")
        batch_op.create_primary_key("pk_asset_scores", ["user_id", "market_date", "asset_id"])
    op.drop_table("calculation_snapshots")
