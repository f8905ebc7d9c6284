"""partition_rosters: who a calculation of one partition is for, decided once

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07

Issue 25 ("the partition's user list computed once per run, not once per step"): the first
step of a calculation stores its users (16 bytes each), the assets they hold and the
currencies they need under the calculation's correlation id; the later steps read it.
Transient (`storage.rosters` keeps a week).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import overnight_pipeline.storage.types

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    document = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "partition_rosters",
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("market_date", sa.Date(), nullable=False),
        sa.Column("market", sa.String(length=16), nullable=False),
        sa.Column("user_ids", sa.LargeBinary(), nullable=False),
        sa.Column("instruments", document, nullable=False),
        sa.Column("currencies", document, nullable=False),
        sa.PrimaryKeyConstraint("correlation_id", name=op.f("pk_partition_rosters")),
    )


def downgrade() -> None:
    op.drop_table("partition_rosters")
