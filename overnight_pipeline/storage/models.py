"""SQLAlchemy 2 typed models. Table names are part of the contract (BEHAVIOUR §1)."""

from __future__ import annotations

import uuid
from datetime import date, datetime
from decimal import Decimal
from typing import Any, ClassVar, cast

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Date,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    Uuid,
    func,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from overnight_pipeline.core.audit import EVENT_TYPES, JOB_STATUSES
from overnight_pipeline.core.vocabulary import (
    ALERT_KINDS,
    ALERT_STATUSES,
    METRICS,
    OPERATORS,
    POINTS_MAX,
    POINTS_MIN,
)
from overnight_pipeline.storage.types import (
    BigId,
    Document,
    ExactDecimal,
    IdArray,
    ScoreArray,
    TextArray,
    UTCDateTime,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def num(column: str) -> str:
    """A column as a number inside a CHECK: SQLite keeps our decimals as exact text."""
    return f"CAST({column} AS NUMERIC)"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        Decimal: ExactDecimal(),
        datetime: UTCDateTime(),
        dict[str, Any]: Document,
        uuid.UUID: Uuid(),
    }


class Asset(Base):
    __tablename__ = "assets"
    __table_args__ = (
        UniqueConstraint("market", "symbol"),
        CheckConstraint("length(currency) = 3", name="currency_iso"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    market: Mapped[str] = mapped_column(String(16))
    symbol: Mapped[str] = mapped_column(String(32))
    currency: Mapped[str] = mapped_column(String(3))
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint("length(base_currency) = 3", name="base_currency_iso"),
        CheckConstraint(
            f"default_contribution IS NULL OR {num('default_contribution')} >= 0",
            name="contribution_not_negative",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    base_currency: Mapped[str] = mapped_column(String(3))
    default_contribution: Mapped[Decimal | None] = mapped_column(ExactDecimal(20, 4))
    active: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    updated_at: Mapped[datetime] = mapped_column(server_default=func.now())


class AssetClass(Base):
    __tablename__ = "asset_classes"
    __table_args__ = (
        UniqueConstraint("user_id", "name"),
        UniqueConstraint("user_id", "id"),
        CheckConstraint(
            f"{num('target_min')} >= 0 AND {num('target_min')} <= {num('target_max')}"
            f" AND {num('target_max')} <= 100",
            name="band_within_0_100",
        ),
        CheckConstraint("max_assets IS NULL OR max_assets > 0", name="max_assets_positive"),
        CheckConstraint(
            f"min_allocation_value IS NULL OR {num('min_allocation_value')} >= 0",
            name="min_allocation_not_negative",
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(100))
    position: Mapped[int] = mapped_column(Integer, default=0)
    target_min: Mapped[Decimal] = mapped_column(ExactDecimal(7, 4))
    target_max: Mapped[Decimal] = mapped_column(ExactDecimal(7, 4))
    max_assets: Mapped[int | None] = mapped_column(Integer)
    min_allocation_value: Mapped[Decimal | None] = mapped_column(ExactDecimal(20, 4))


class Holding(Base):
    __tablename__ = "holdings"
    __table_args__ = (
        ForeignKeyConstraint(
            ["user_id", "asset_class_id"],
            ["asset_classes.user_id", "asset_classes.id"],
            ondelete="CASCADE",
            name="fk_holdings_asset_class_of_same_user",
        ),
        CheckConstraint(f"{num('quantity')} > 0", name="quantity_positive"),
        Index("ix_holdings_asset_id", "asset_id"),
    )

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    asset_class_id: Mapped[uuid.UUID] = mapped_column()
    quantity: Mapped[Decimal] = mapped_column(ExactDecimal(28, 10))


class CriteriaVersion(Base):
    __tablename__ = "criteria_versions"
    __table_args__ = (
        UniqueConstraint("user_id", "version"),
        CheckConstraint("version >= 1", name="version_positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CriteriaRule(Base):
    """One rule of an immutable criteria version, in document order."""

    __tablename__ = "criteria_rules"
    __table_args__ = (
        UniqueConstraint("criteria_version_id", "rule_id"),
        CheckConstraint(_in("metric", METRICS), name="known_metric"),
        CheckConstraint(_in("operator", OPERATORS), name="known_operator"),
        CheckConstraint(f"points BETWEEN {POINTS_MIN} AND {POINTS_MAX}", name="points_range"),
        CheckConstraint("operator = 'exists' OR value IS NOT NULL", name="value_required"),
        CheckConstraint(
            f"operator <> 'between' OR (value2 IS NOT NULL AND {num('value')} <= {num('value2')})",
            name="between_bounds",
        ),
    )

    criteria_version_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("criteria_versions.id", ondelete="CASCADE"), primary_key=True
    )
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[str] = mapped_column(String(64))
    asset_class: Mapped[str] = mapped_column(String(100))
    metric: Mapped[str] = mapped_column(String(32))
    operator: Mapped[str] = mapped_column(String(8))
    value: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    value2: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    points: Mapped[int] = mapped_column(Integer)


class ExchangeRate(Base):
    """USD-quoted rates: 1 `base` = `rate` `quote`, one snapshot per rate date."""

    __tablename__ = "exchange_rates"
    __table_args__ = (CheckConstraint(f"{num('rate')} > 0", name="rate_positive"),)

    rate_date: Mapped[date] = mapped_column(Date, primary_key=True)
    base: Mapped[str] = mapped_column(String(3), primary_key=True)
    quote: Mapped[str] = mapped_column(String(3), primary_key=True)
    rate: Mapped[Decimal] = mapped_column(ExactDecimal(28, 12))
    source: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[datetime] = mapped_column()


class AssetPrice(Base):
    __tablename__ = "asset_prices"
    __table_args__ = (CheckConstraint(f"{num('price')} > 0", name="price_positive"),)

    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    price_date: Mapped[date] = mapped_column(Date, primary_key=True)
    price: Mapped[Decimal] = mapped_column(ExactDecimal(28, 10))
    currency: Mapped[str] = mapped_column(String(3))
    source: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[datetime] = mapped_column()


class AssetFundamentals(Base):
    """One row per asset and date; one nullable column per metric of BEHAVIOUR §1."""

    __tablename__ = "asset_fundamentals"

    asset_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("assets.id"), primary_key=True)
    fundamentals_date: Mapped[date] = mapped_column(Date, primary_key=True)
    dividend_yield: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    pe_ratio: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    pb_ratio: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    market_cap: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    revenue: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    earnings: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    surplus_years: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    roe: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    roa: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    debt_to_equity: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    current_ratio: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    gross_margin: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    net_margin: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    payout_ratio: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    ev_ebitda: Mapped[Decimal | None] = mapped_column(ExactDecimal(28, 10))
    source: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[datetime] = mapped_column()


class UserScores(Base):
    """Each user's current scores: one row a user, one element per held asset in each array
    (same order), replaced by each newer calculation of the user (a backfill of an older
    date leaves a newer row). Read through the view `asset_scores` (`storage.scores`), "the
    current score of user U for asset A". One row a user instead of one per holding
    (issue 25). No foreign key: `seeding.delete_users` deletes it with the user."""

    __tablename__ = "user_scores"

    user_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    market_date: Mapped[date] = mapped_column(Date)
    criteria_version: Mapped[int] = mapped_column(Integer)
    computed_at: Mapped[datetime] = mapped_column()
    correlation_id: Mapped[uuid.UUID] = mapped_column()
    asset_ids: Mapped[list[uuid.UUID]] = mapped_column(IdArray)
    markets: Mapped[list[str]] = mapped_column(TextArray)
    scores: Mapped[list[Decimal]] = mapped_column(ScoreArray)
    max_possible_scores: Mapped[list[Decimal]] = mapped_column(ScoreArray)
    # [{"criteriaCount": n, "topContributor": …}, …]
    breakdowns: Mapped[list[Any]] = mapped_column(Document)


class Recommendation(Base):
    """A user's recommendations for one market-date: the dashboard's fallback source."""

    __tablename__ = "recommendations"
    __table_args__ = (Index("ix_recommendations_user_newest", "user_id", "generated_at"),)

    user_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    market_date: Mapped[date] = mapped_column(Date, primary_key=True)
    market: Mapped[str] = mapped_column(String(16))
    correlation_id: Mapped[uuid.UUID] = mapped_column()
    generated_at: Mapped[datetime] = mapped_column()
    base_currency: Mapped[str] = mapped_column(String(3))
    total_investable: Mapped[Decimal] = mapped_column(ExactDecimal(20, 4))
    criteria_version: Mapped[int | None] = mapped_column(Integer)
    payload: Mapped[dict[str, Any]] = mapped_column()
    portfolio: Mapped[dict[str, Any]] = mapped_column()


class CalculationEvent(Base):
    """The audit trail (BEHAVIOUR §4). On PostgreSQL a monthly partition per month of
    `calculated_at` (`storage.partitions`): the creation time of the calculation's root run,
    so a retried or re-executed step writes into the partition of its first attempt and the
    unique key, which includes it, refuses a duplicate. On SQLite (the demo) a plain table
    whose `id` is the rowid, with an index on `calculated_at` for the batched retention.
    Every reader selects by correlation id (the unique key); no index by user (revision
    0010: no query read it, ≈ 106 bytes per user-night)."""

    __tablename__ = "calculation_events"
    __table_args__ = (
        UniqueConstraint("correlation_id", "user_id", "event_type", "calculated_at"),
        CheckConstraint(_in("event_type", EVENT_TYPES), name="known_event_type"),
        {"postgresql_partition_by": "RANGE (calculated_at)"},
    )

    # In the database's column order: fixed widths first, so rows carry no padding.
    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    calculated_at: Mapped[datetime] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    correlation_id: Mapped[uuid.UUID] = mapped_column()
    user_id: Mapped[uuid.UUID] = mapped_column()
    event_type: Mapped[str] = mapped_column(String(32))
    payload: Mapped[dict[str, Any]] = mapped_column()


class CalculationSnapshot(Base):
    """What the users of a calculation share, stored once per month: a market-date's prices,
    fundamentals and rates as the run used them (`market`), a criteria version's rules
    (`criteria`, shared by the nights of the month and by users with the same rules), a
    user's own inputs (`inputs`: classes, holdings, contribution; shared by the nights of the
    month while they do not change, revision 0012); immutable, keyed by the hash of its
    canonical JSON encoding (`core.snapshots`) and the month of the calculations that
    reference it, inserted with ON CONFLICT DO NOTHING, never updated. `INPUTS_CAPTURED`
    events reference it by `hash`; the month makes it live exactly as long as they do (a
    snapshot used again next month is stored again in next month's partition)."""

    __tablename__ = "calculation_snapshots"
    __table_args__ = (
        CheckConstraint("kind IN ('market', 'criteria', 'inputs')", name="known_kind"),
        {"postgresql_partition_by": "RANGE (month)"},
    )

    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    month: Mapped[date] = mapped_column(Date, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())


class CalculationAsset(Base):
    """Which calculation scored which asset for whom: "all calculations for asset X"
    (BEHAVIOUR §4, issue 25). One row per (asset, calculation, user bucket, written batch)
    holding parallel arrays of users and scores (`storage.results.calculation_asset_rows`);
    the bucket is the user id's first hex digit, and the queries read every row of a bucket
    whatever batch or shard wrote it (docs/EVENTS.md, "The asset-X index"). Partitioned by
    month of `calculated_at` like its events (SQLite: an index on `calculated_at` serves
    retention). No primary key: a row is written in the transaction of its calculation's
    events, whose unique key refuses a second write."""

    __tablename__ = "calculation_assets"
    __table_args__ = (
        Index(
            "ix_calculation_assets_asset_newest",
            "asset_id",
            "calculated_at",
            "correlation_id",
            "bucket",
        ),
        Index(
            "ix_calculation_assets_asset_bucket",
            "asset_id",
            "bucket",
            "calculated_at",
            "correlation_id",
        ),
        {"postgresql_partition_by": "RANGE (calculated_at)"},
    )

    asset_id: Mapped[uuid.UUID] = mapped_column()
    correlation_id: Mapped[uuid.UUID] = mapped_column()
    calculated_at: Mapped[datetime] = mapped_column()
    bucket: Mapped[int] = mapped_column(SmallInteger)
    user_ids: Mapped[list[uuid.UUID]] = mapped_column(IdArray)
    scores: Mapped[list[Decimal]] = mapped_column(ScoreArray)

    __mapper_args__ = {"primary_key": [asset_id, correlation_id, bucket]}  # noqa: RUF012


class OvernightJobRun(Base):
    """One row per run (BEHAVIOUR §4). Partitioned by month of `started_at` on PostgreSQL, where
    a unique key must include the partition key: one row per `run_id` is kept by its
    writers (`storage.job_runs`, one at a time per run id); SQLite keeps a unique key on
    `run_id`."""

    __tablename__ = "overnight_job_runs"
    __table_args__ = (
        CheckConstraint(_in("status", JOB_STATUSES), name="known_status"),
        CheckConstraint("users_processed >= 0 AND users_failed >= 0", name="counts_positive"),
        Index("ix_overnight_job_runs_market_date", "market", "market_date"),
        Index("ix_overnight_job_runs_started_at", "started_at"),
        Index("ix_overnight_job_runs_run_id", "run_id"),
        {"postgresql_partition_by": "RANGE (started_at)"},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    started_at: Mapped[datetime] = mapped_column(primary_key=True)
    run_id: Mapped[str | None] = mapped_column(String(64))
    job_type: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(20))
    completed_at: Mapped[datetime | None] = mapped_column()
    users_processed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    users_failed: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    correlation_id: Mapped[uuid.UUID] = mapped_column()
    error_details: Mapped[dict[str, Any] | None] = mapped_column()
    metrics: Mapped[dict[str, Any] | None] = mapped_column()
    market: Mapped[str | None] = mapped_column(String(16))
    market_date: Mapped[date | None] = mapped_column(Date)


class Alert(Base):
    """One alert per market, market date and kind (BEHAVIOUR §9): the row is claimed before the
    webhook is called, so sensor ticks and daemon restarts never send it twice; it keeps
    what to send and where its delivery stands (pending, sending, sent, failed: retried at
    `next_attempt_at`, abandoned)."""

    __tablename__ = "alerts"
    __table_args__ = (
        UniqueConstraint("market", "market_date", "kind"),
        CheckConstraint(_in("kind", ALERT_KINDS), name="known_kind"),
        CheckConstraint(_in("status", ALERT_STATUSES), name="known_status"),
        CheckConstraint("attempts >= 0", name="attempts_positive"),
        Index("ix_alerts_status_next_attempt_at", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    market: Mapped[str] = mapped_column(String(16))
    market_date: Mapped[date] = mapped_column(Date)
    kind: Mapped[str] = mapped_column(String(32))
    run_id: Mapped[str | None] = mapped_column(String(64))
    payload: Mapped[dict[str, Any]] = mapped_column()
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    created_at: Mapped[datetime] = mapped_column(server_default=func.now())
    next_attempt_at: Mapped[datetime] = mapped_column()
    sent_at: Mapped[datetime | None] = mapped_column()
    last_error: Mapped[str | None] = mapped_column(Text)


class UserChange(Base):
    """The outbox of users whose result-relevant inputs changed (BEHAVIOUR §5): written by
    `overnight load` in the transaction of the data, marked processed by the recalculation in
    the transaction of its results. `what` lists what changed (`storage.loader.CHANGE_KINDS`)."""

    __tablename__ = "user_changes"
    __table_args__ = (
        Index("ix_user_changes_pending", "processed_at", "id"),
        Index("ix_user_changes_user_changed", "user_id", "changed_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    changed_at: Mapped[datetime] = mapped_column()
    what: Mapped[list[str]] = mapped_column(Document)
    processed_at: Mapped[datetime | None] = mapped_column()


class PartitionRoster(Base):
    """Who a calculation of one partition is for, decided once: the users whose home market
    is the partition's on its date, the assets they hold and the currencies they need,
    computed by the calculation's first step and read by the others (they computed it each,
    four times a run). Keyed by the calculation's correlation id, the same for retries and
    re-executions, so a re-executed step serves the users the calculation started with.
    Transient: `storage.rosters` deletes rosters older than a week as it writes one."""

    __tablename__ = "partition_rosters"

    correlation_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column()
    market_date: Mapped[date] = mapped_column(Date)
    market: Mapped[str] = mapped_column(String(16))
    user_ids: Mapped[bytes] = mapped_column(LargeBinary)  # 16 bytes per user, in id order
    # [[market, symbol, asset id, currency], …] and [currency, …]
    instruments: Mapped[list[Any]] = mapped_column(Document)
    currencies: Mapped[list[Any]] = mapped_column(Document)


# Core Table objects, typed for mypy (Model.__table__ is a FromClause to the type checker).
assets_table = cast(Table, Asset.__table__)
users_table = cast(Table, User.__table__)
asset_classes_table = cast(Table, AssetClass.__table__)
holdings_table = cast(Table, Holding.__table__)
criteria_versions_table = cast(Table, CriteriaVersion.__table__)
criteria_rules_table = cast(Table, CriteriaRule.__table__)
exchange_rates_table = cast(Table, ExchangeRate.__table__)
asset_prices_table = cast(Table, AssetPrice.__table__)
asset_fundamentals_table = cast(Table, AssetFundamentals.__table__)
user_scores_table = cast(Table, UserScores.__table__)
recommendations_table = cast(Table, Recommendation.__table__)
calculation_events_table = cast(Table, CalculationEvent.__table__)
calculation_assets_table = cast(Table, CalculationAsset.__table__)
calculation_snapshots_table = cast(Table, CalculationSnapshot.__table__)
overnight_job_runs_table = cast(Table, OvernightJobRun.__table__)
alerts_table = cast(Table, Alert.__table__)
user_changes_table = cast(Table, UserChange.__table__)
partition_rosters_table = cast(Table, PartitionRoster.__table__)
