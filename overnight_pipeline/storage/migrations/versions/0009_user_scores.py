"""user_scores: each user's current scores in one row; asset_scores becomes its view

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07

Issue 25: replacing a user's ≈ 30 `asset_scores` rows each night was half of PostgreSQL's
CPU of a night. `user_scores` keeps one row a user (parallel arrays, one element per held
asset; PostgreSQL arrays, SQLite JSON arrays of the ids' 32 hex digits and the scores' text)
and the view `asset_scores` gives the same columns as before, one row per user and asset.
The existing rows are moved (a user's assets in asset id order); the downgrade moves them
back into the table.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import overnight_pipeline.storage.types

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

_COLUMNS = (
    "user_id, asset_id, market_date, market, score, max_possible_score, criteria_version,"
    " breakdown, correlation_id, computed_at"
)
_VIEW = {
    "postgresql": (
        "CREATE VIEW asset_scores AS"
        " SELECT s.user_id, u.asset_id, s.market_date, u.market, u.score,"
        " u.max_possible_score, s.criteria_version, s.breakdowns -> (u.i::int - 1) AS breakdown,"
        " s.correlation_id, s.computed_at"
        " FROM user_scores s CROSS JOIN LATERAL"
        " unnest(s.asset_ids, s.markets, s.scores, s.max_possible_scores)"
        " WITH ORDINALITY AS u(asset_id, market, score, max_possible_score, i)"
    ),
    "sqlite": (
        "CREATE VIEW asset_scores AS"
        " SELECT s.user_id AS user_id, a.value AS asset_id, s.market_date AS market_date,"
        " m.value AS market, sc.value AS score, mx.value AS max_possible_score,"
        " s.criteria_version AS criteria_version, b.value AS breakdown,"
        " s.correlation_id AS correlation_id, s.computed_at AS computed_at"
        " FROM user_scores s, json_each(s.asset_ids) a"
        " JOIN json_each(s.markets) m ON m.key = a.key"
        " JOIN json_each(s.scores) sc ON sc.key = a.key"
        " JOIN json_each(s.max_possible_scores) mx ON mx.key = a.key"
        " JOIN json_each(s.breakdowns) b ON b.key = a.key"
    ),
}
_MOVE = {
    "postgresql": (
        "INSERT INTO user_scores SELECT user_id, max(market_date), max(criteria_version),"
        " max(computed_at), (array_agg(correlation_id))[1],"
        " array_agg(asset_id ORDER BY asset_id), array_agg(market ORDER BY asset_id),"
        " array_agg(score ORDER BY asset_id), array_agg(max_possible_score ORDER BY asset_id),"
        " jsonb_agg(breakdown ORDER BY asset_id)"
        " FROM asset_scores_old GROUP BY user_id"
    ),
    "sqlite": (
        "INSERT INTO user_scores SELECT user_id, max(market_date), max(criteria_version),"
        " max(computed_at), min(correlation_id), json_group_array(asset_id),"
        " json_group_array(market), json_group_array(score),"
        " json_group_array(max_possible_score), json_group_array(json(breakdown))"
        " FROM (SELECT * FROM asset_scores_old ORDER BY user_id, asset_id) GROUP BY user_id"
    ),
}


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    document = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "user_scores",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("market_date", sa.Date(), nullable=False),
        sa.Column("criteria_version", sa.Integer(), nullable=False),
        sa.Column(
            "computed_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "asset_ids",
            postgresql.ARRAY(sa.Uuid()).with_variant(sa.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "markets",
            postgresql.ARRAY(sa.String(length=16)).with_variant(sa.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "scores",
            postgresql.ARRAY(sa.Numeric(precision=16, scale=4)).with_variant(sa.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column(
            "max_possible_scores",
            postgresql.ARRAY(sa.Numeric(precision=16, scale=4)).with_variant(sa.JSON(), "sqlite"),
            nullable=False,
        ),
        sa.Column("breakdowns", document, nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_scores")),
    )
    if dialect == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,):
        op.execute("ALTER TABLE user_scores ALTER COLUMN breakdowns SET COMPRESSION lz4")
    op.rename_table("asset_scores", "asset_scores_old")
    op.execute(_MOVE[dialect])
    op.drop_table("asset_scores_old")
    op.execute(_VIEW[dialect])


def downgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    op.execute("DROP VIEW asset_scores")
    op.rename_table("user_scores", "user_scores_old")
    op.execute(_VIEW[dialect].replace("user_scores", "user_scores_old"))
    numeric = (
        overnight_pipeline.storage.types.ExactDecimal(16, 4)
        if dialect == "postgresql"
        else sa.Text()
    )
    document = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")
    op.create_table(
        "asset_scores_new",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("market_date", sa.Date(), nullable=False),
        sa.Column("market", sa.String(length=16), nullable=False),
        sa.Column("score", numeric, nullable=False),
        sa.Column("max_possible_score", numeric, nullable=False),
        sa.Column("criteria_version", sa.Integer(), nullable=False),
        sa.Column("breakdown", document, nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "computed_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("user_id", "asset_id", name=op.f("pk_asset_scores")),
    )
    op.execute(f"INSERT INTO asset_scores_new ({_COLUMNS}) SELECT {_COLUMNS} FROM asset_scores")
    op.execute("DROP VIEW asset_scores")
    op.drop_table("user_scores_old")
    op.rename_table("asset_scores_new", "asset_scores")
    if dialect == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,):
        op.execute("ALTER TABLE asset_scores ALTER COLUMN breakdown SET COMPRESSION lz4")
