"""alerts: one row per market, market date and kind, claimed before the webhook is called

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-08

The unique key (market, market_date, kind) is what makes an alert go out once across
sensor ticks and daemon restarts; the row also keeps the payload and its delivery state, so
a receiver that was down is retried later (`overnight_pipeline.alerts`).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import overnight_pipeline.storage.types

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("market", sa.String(length=16), nullable=False),
        sa.Column("market_date", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("status", sa.String(length=16), server_default="pending", nullable=False),
        sa.Column("attempts", sa.Integer(), server_default="0", nullable=False),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column(
            "next_attempt_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "sent_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "kind IN ('deadline_missed', 'run_failed', 'partial_over_limit', 'replay_mismatch')",
            name=op.f("ck_alerts_known_kind"),
        ),
        sa.CheckConstraint(
            "status IN ('pending', 'sending', 'sent', 'failed', 'abandoned')",
            name=op.f("ck_alerts_known_status"),
        ),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_alerts_attempts_positive")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alerts")),
        sa.UniqueConstraint(
            "market", "market_date", "kind", name=op.f("uq_alerts_market_market_date_kind")
        ),
    )
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.create_index(
            "ix_alerts_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_index("ix_alerts_status_next_attempt_at")
    op.drop_table("alerts")
