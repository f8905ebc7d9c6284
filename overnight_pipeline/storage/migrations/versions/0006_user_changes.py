"""user_changes: the outbox of users whose result-relevant inputs changed

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07

Written by `overnight load` in the transaction of the data it changes, one row per changed
user and load; `overnight recalculate` marks the rows it computed processed in the
transaction of the results (BEHAVIOUR §5, issue 23). Pending rows are found through
(processed_at, id); a user's newest change through (user_id, changed_at).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import overnight_pipeline.storage.types

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "user_changes",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "changed_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "what",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "processed_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_changes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_changes")),
    )
    with op.batch_alter_table("user_changes", schema=None) as batch_op:
        batch_op.create_index("ix_user_changes_pending", ["processed_at", "id"], unique=False)
        batch_op.create_index(
            "ix_user_changes_user_changed", ["user_id", "changed_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("user_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_user_changes_user_changed")
        batch_op.drop_index("ix_user_changes_pending")
    op.drop_table("user_changes")
