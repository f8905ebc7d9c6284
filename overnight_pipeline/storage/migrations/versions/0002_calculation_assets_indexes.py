"""calculation_assets: per-user audit index and a created_at index for retention

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

The dashboard asks "my calculations for asset X, newest first": (user_id, asset_id,
created_at) serves it without walking other users' rows. Retention deletes the oldest rows
in batches: (created_at) finds them without a scan.
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("calculation_assets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_calculation_assets_user_asset_newest",
            ["user_id", "asset_id", "created_at"],
            unique=False,
        )
        batch_op.create_index("ix_calculation_assets_created_at", ["created_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("calculation_assets", schema=None) as batch_op:
        batch_op.drop_index("ix_calculation_assets_created_at")
        batch_op.drop_index("ix_calculation_assets_user_asset_newest")
