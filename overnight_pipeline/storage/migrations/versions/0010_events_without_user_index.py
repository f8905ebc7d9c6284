"""calculation_events without the index on (user_id, created_at)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07

Issue 25 (bytes per user-night): no query reads the events by user and time. Every reader
(`storage.events`, `storage.job_runs`, the replay, the benchmarks) selects by correlation
id, served by the unique key (correlation_id, user_id, event_type, calculated_at) that
BEHAVIOUR §4 requires; the index on (user_id, created_at) cost ≈ 106 bytes per user-night (four
entries) and its maintenance on every event written. The downgrade builds it again.
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

INDEX = "ix_calculation_events_user_created"


def upgrade() -> None:
    # On PostgreSQL the parent's index: each month's index goes with it.
    op.drop_index(INDEX, table_name="calculation_events")


def downgrade() -> None:
    op.create_index(INDEX, "calculation_events", ["user_id", "created_at"])
