"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-29

Every table of BEHAVIOUR §1/§4 with the constraints of §1. Runs on PostgreSQL and SQLite.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import overnight_pipeline.storage.types

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "assets",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("market", sa.String(length=16), nullable=False),
        sa.Column("symbol", sa.String(length=32), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint("length(currency) = 3", name=op.f("ck_assets_currency_iso")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_assets")),
        sa.UniqueConstraint("market", "symbol", name=op.f("uq_assets_market_symbol")),
    )
    op.create_table(
        "calculation_assets",
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column(
            "score",
            overnight_pipeline.storage.types.ExactDecimal(precision=16, scale=4),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint(
            "asset_id", "correlation_id", "user_id", name=op.f("pk_calculation_assets")
        ),
    )
    with op.batch_alter_table("calculation_assets", schema=None) as batch_op:
        batch_op.create_index(
            "ix_calculation_assets_asset_newest",
            ["asset_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "calculation_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
        ),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "event_type IN ('CALC_STARTED', 'INPUTS_CAPTURED', 'SCORES_COMPUTED', 'CALC_COMPLETED')",
            name=op.f("ck_calculation_events_known_event_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calculation_events")),
        sa.UniqueConstraint(
            "correlation_id",
            "user_id",
            "event_type",
            name=op.f("uq_calculation_events_correlation_id_user_id_event_type"),
        ),
    )
    with op.batch_alter_table("calculation_events", schema=None) as batch_op:
        batch_op.create_index("ix_calculation_events_created_at", ["created_at"], unique=False)
        batch_op.create_index(
            "ix_calculation_events_user_created",
            ["user_id", "created_at"],
            unique=False,
        )

    op.create_table(
        "exchange_rates",
        sa.Column("rate_date", sa.Date(), nullable=False),
        sa.Column("base", sa.String(length=3), nullable=False),
        sa.Column("quote", sa.String(length=3), nullable=False),
        sa.Column(
            "rate",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=12),
            nullable=False,
        ),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column(
            "as_of",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.CheckConstraint(
            "CAST(rate AS NUMERIC) > 0", name=op.f("ck_exchange_rates_rate_positive")
        ),
        sa.PrimaryKeyConstraint("rate_date", "base", "quote", name=op.f("pk_exchange_rates")),
    )
    op.create_table(
        "overnight_job_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("job_type", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column(
            "started_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column(
            "completed_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=True,
        ),
        sa.Column("users_processed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("users_failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "error_details",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column(
            "metrics",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=True,
        ),
        sa.Column("market", sa.String(length=16), nullable=True),
        sa.Column("market_date", sa.Date(), nullable=True),
        sa.CheckConstraint(
            "status IN ('started', 'completed', 'failed', 'partial')",
            name=op.f("ck_overnight_job_runs_known_status"),
        ),
        sa.CheckConstraint(
            "users_processed >= 0 AND users_failed >= 0",
            name=op.f("ck_overnight_job_runs_counts_positive"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_overnight_job_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_overnight_job_runs_run_id")),
    )
    with op.batch_alter_table("overnight_job_runs", schema=None) as batch_op:
        batch_op.create_index(
            "ix_overnight_job_runs_market_date", ["market", "market_date"], unique=False
        )
        batch_op.create_index("ix_overnight_job_runs_started_at", ["started_at"], unique=False)

    op.create_table(
        "users",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("base_currency", sa.String(length=3), nullable=False),
        sa.Column(
            "default_contribution",
            overnight_pipeline.storage.types.ExactDecimal(precision=20, scale=4),
            nullable=True,
        ),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "default_contribution IS NULL OR CAST(default_contribution AS NUMERIC) >= 0",
            name=op.f("ck_users_contribution_not_negative"),
        ),
        sa.CheckConstraint("length(base_currency) = 3", name=op.f("ck_users_base_currency_iso")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
    )
    op.create_table(
        "asset_classes",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.String(length=100), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column(
            "target_min",
            overnight_pipeline.storage.types.ExactDecimal(precision=7, scale=4),
            nullable=False,
        ),
        sa.Column(
            "target_max",
            overnight_pipeline.storage.types.ExactDecimal(precision=7, scale=4),
            nullable=False,
        ),
        sa.Column("max_assets", sa.Integer(), nullable=True),
        sa.Column(
            "min_allocation_value",
            overnight_pipeline.storage.types.ExactDecimal(precision=20, scale=4),
            nullable=True,
        ),
        sa.CheckConstraint(
            "CAST(target_min AS NUMERIC) >= 0 AND CAST(target_min AS NUMERIC) <= CAST(target_max AS NUMERIC) AND CAST(target_max AS NUMERIC) <= 100",
            name=op.f("ck_asset_classes_band_within_0_100"),
        ),
        sa.CheckConstraint(
            "max_assets IS NULL OR max_assets > 0",
            name=op.f("ck_asset_classes_max_assets_positive"),
        ),
        sa.CheckConstraint(
            "min_allocation_value IS NULL OR CAST(min_allocation_value AS NUMERIC) >= 0",
            name=op.f("ck_asset_classes_min_allocation_not_negative"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_asset_classes_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_asset_classes")),
        sa.UniqueConstraint("user_id", "id", name=op.f("uq_asset_classes_user_id_id")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_asset_classes_user_id_name")),
    )
    op.create_table(
        "asset_fundamentals",
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("fundamentals_date", sa.Date(), nullable=False),
        sa.Column(
            "dividend_yield",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "pe_ratio",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "pb_ratio",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "market_cap",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "revenue",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "earnings",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "surplus_years",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "roe",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "roa",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "debt_to_equity",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "current_ratio",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "gross_margin",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "net_margin",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "payout_ratio",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "ev_ebitda",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column(
            "as_of",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"],
            ["assets.id"],
            name=op.f("fk_asset_fundamentals_asset_id_assets"),
        ),
        sa.PrimaryKeyConstraint(
            "asset_id", "fundamentals_date", name=op.f("pk_asset_fundamentals")
        ),
    )
    op.create_table(
        "asset_prices",
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("price_date", sa.Date(), nullable=False),
        sa.Column(
            "price",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=False,
        ),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=False),
        sa.Column(
            "as_of",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.CheckConstraint(
            "CAST(price AS NUMERIC) > 0", name=op.f("ck_asset_prices_price_positive")
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_asset_prices_asset_id_assets")
        ),
        sa.PrimaryKeyConstraint("asset_id", "price_date", name=op.f("pk_asset_prices")),
    )
    op.create_table(
        "asset_scores",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("market_date", sa.Date(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("market", sa.String(length=16), nullable=False),
        sa.Column(
            "score",
            overnight_pipeline.storage.types.ExactDecimal(precision=16, scale=4),
            nullable=False,
        ),
        sa.Column(
            "max_possible_score",
            overnight_pipeline.storage.types.ExactDecimal(precision=16, scale=4),
            nullable=False,
        ),
        sa.Column("criteria_version", sa.Integer(), nullable=False),
        sa.Column(
            "breakdown",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "computed_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_asset_scores_asset_id_assets")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_asset_scores_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "market_date", "asset_id", name=op.f("pk_asset_scores")),
    )
    op.create_table(
        "criteria_versions",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            server_default=sa.text("CURRENT_TIMESTAMP"),
            nullable=False,
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_criteria_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_criteria_versions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_criteria_versions")),
        sa.UniqueConstraint(
            "user_id", "version", name=op.f("uq_criteria_versions_user_id_version")
        ),
    )
    op.create_table(
        "recommendations",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("market_date", sa.Date(), nullable=False),
        sa.Column("market", sa.String(length=16), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column(
            "generated_at",
            overnight_pipeline.storage.types.UTCDateTime(timezone=True),
            nullable=False,
        ),
        sa.Column("base_currency", sa.String(length=3), nullable=False),
        sa.Column(
            "total_investable",
            overnight_pipeline.storage.types.ExactDecimal(precision=20, scale=4),
            nullable=False,
        ),
        sa.Column("criteria_version", sa.Integer(), nullable=True),
        sa.Column(
            "payload",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column(
            "portfolio",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_recommendations_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "market_date", name=op.f("pk_recommendations")),
    )
    with op.batch_alter_table("recommendations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_recommendations_user_newest", ["user_id", "generated_at"], unique=False
        )

    op.create_table(
        "criteria_rules",
        sa.Column("criteria_version_id", sa.Uuid(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.String(length=64), nullable=False),
        sa.Column("asset_class", sa.String(length=100), nullable=False),
        sa.Column("metric", sa.String(length=32), nullable=False),
        sa.Column("operator", sa.String(length=8), nullable=False),
        sa.Column(
            "value",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column(
            "value2",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=True,
        ),
        sa.Column("points", sa.Integer(), nullable=False),
        sa.CheckConstraint(
            "metric IN ('dividend_yield', 'pe_ratio', 'pb_ratio', 'market_cap', 'revenue', 'earnings', 'surplus_years', 'roe', 'roa', 'debt_to_equity', 'current_ratio', 'gross_margin', 'net_margin', 'payout_ratio', 'ev_ebitda')",
            name=op.f("ck_criteria_rules_known_metric"),
        ),
        sa.CheckConstraint(
            "operator <> 'between' OR (value2 IS NOT NULL AND CAST(value AS NUMERIC) <= CAST(value2 AS NUMERIC))",
            name=op.f("ck_criteria_rules_between_bounds"),
        ),
        sa.CheckConstraint(
            "operator = 'exists' OR value IS NOT NULL",
            name=op.f("ck_criteria_rules_value_required"),
        ),
        sa.CheckConstraint(
            "operator IN ('gt', 'lt', 'gte', 'lte', 'between', 'equals', 'exists')",
            name=op.f("ck_criteria_rules_known_operator"),
        ),
        sa.CheckConstraint(
            "points BETWEEN -100 AND 100", name=op.f("ck_criteria_rules_points_range")
        ),
        sa.ForeignKeyConstraint(
            ["criteria_version_id"],
            ["criteria_versions.id"],
            name=op.f("fk_criteria_rules_criteria_version_id_criteria_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("criteria_version_id", "position", name=op.f("pk_criteria_rules")),
        sa.UniqueConstraint(
            "criteria_version_id",
            "rule_id",
            name=op.f("uq_criteria_rules_criteria_version_id_rule_id"),
        ),
    )
    op.create_table(
        "holdings",
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("asset_class_id", sa.Uuid(), nullable=False),
        sa.Column(
            "quantity",
            overnight_pipeline.storage.types.ExactDecimal(precision=28, scale=10),
            nullable=False,
        ),
        sa.CheckConstraint(
            "CAST(quantity AS NUMERIC) > 0", name=op.f("ck_holdings_quantity_positive")
        ),
        sa.ForeignKeyConstraint(
            ["asset_id"], ["assets.id"], name=op.f("fk_holdings_asset_id_assets")
        ),
        sa.ForeignKeyConstraint(
            ["user_id", "asset_class_id"],
            ["asset_classes.user_id", "asset_classes.id"],
            name="fk_holdings_asset_class_of_same_user",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_holdings_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("user_id", "asset_id", name=op.f("pk_holdings")),
    )
    with op.batch_alter_table("holdings", schema=None) as batch_op:
        batch_op.create_index("ix_holdings_asset_id", ["asset_id"], unique=False)

    bind = op.get_bind()
    if bind.dialect.name == "postgresql" and (bind.dialect.server_version_info or (0,)) >= (14,):
        # lz4 TOAST compression: faster bulk writes of the audit payloads than pglz (BEHAVIOUR
        # §8; docs/PERFORMANCE.md, "Figures once quoted in the code").
        for table, column in _COMPRESSED:
            op.execute(f"ALTER TABLE {table} ALTER COLUMN {column} SET COMPRESSION lz4")


_COMPRESSED = (
    ("calculation_events", "payload"),
    ("recommendations", "payload"),
    ("recommendations", "portfolio"),
    ("asset_scores", "breakdown"),
)


def downgrade() -> None:

    with op.batch_alter_table("holdings", schema=None) as batch_op:
        batch_op.drop_index("ix_holdings_asset_id")

    op.drop_table("holdings")
    op.drop_table("criteria_rules")
    with op.batch_alter_table("recommendations", schema=None) as batch_op:
        batch_op.drop_index("ix_recommendations_user_newest")

    op.drop_table("recommendations")
    op.drop_table("criteria_versions")
    op.drop_table("asset_scores")
    op.drop_table("asset_prices")
    op.drop_table("asset_fundamentals")
    op.drop_table("asset_classes")
    op.drop_table("users")
    with op.batch_alter_table("overnight_job_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_overnight_job_runs_started_at")
        batch_op.drop_index("ix_overnight_job_runs_market_date")

    op.drop_table("overnight_job_runs")
    op.drop_table("exchange_rates")
    with op.batch_alter_table("calculation_events", schema=None) as batch_op:
        batch_op.drop_index("ix_calculation_events_user_created")
        batch_op.drop_index("ix_calculation_events_created_at")

    op.drop_table("calculation_events")
    with op.batch_alter_table("calculation_assets", schema=None) as batch_op:
        batch_op.drop_index("ix_calculation_assets_asset_newest")

    op.drop_table("calculation_assets")
    op.drop_table("assets")
