"""Read side for the dashboard and operators. Functions take a `Connection` and never commit:
the caller owns the transaction."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel
from sqlalchemy import (
    Connection,
    FromClause,
    Integer,
    Select,
    SmallInteger,
    Text,
    Uuid,
    bindparam,
    cast,
    column,
    func,
    literal,
    select,
    true,
    tuple_,
    type_coerce,
)

from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    calculation_assets_table,
    holdings_table,
    overnight_job_runs_table,
    recommendations_table,
    users_table,
)
from overnight_pipeline.storage.results import bucket_of
from overnight_pipeline.storage.types import ExactDecimal, UTCDateTime

MAX_PAGE = 1_000


@dataclass(frozen=True)
class PersistedRecommendation:
    """A `recommendations` row; the two documents stay JSON text, as stored."""

    user_id: uuid.UUID
    market_date: date
    market: str
    generated_at: datetime
    base_currency: str
    total_investable: Decimal
    criteria_version: int | None
    correlation_id: uuid.UUID
    payload_json: str
    portfolio_json: str


@dataclass(frozen=True)
class CalculationCursor:
    """Position after the last row of a page (newest-first order)."""

    calculated_at: datetime
    correlation_id: uuid.UUID
    user_id: uuid.UUID


@dataclass(frozen=True)
class AssetCalculation:
    asset_id: uuid.UUID
    correlation_id: uuid.UUID
    user_id: uuid.UUID
    score: Decimal
    calculated_at: datetime

    @property
    def cursor(self) -> CalculationCursor:
        return CalculationCursor(self.calculated_at, self.correlation_id, self.user_id)


class JobRun(BaseModel):
    """An `overnight_job_runs` row; also what `GET /api/jobs` sends (camelCase)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    id: uuid.UUID
    run_id: str | None
    job_type: str
    status: Literal["started", "completed", "failed", "partial"]
    market: str | None
    market_date: date | None
    started_at: datetime
    completed_at: datetime | None
    users_processed: int
    users_failed: int
    correlation_id: uuid.UUID
    error_details: dict[str, Any] | None
    metrics: dict[str, Any] | None


def _limit(limit: int) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_PAGE:
        raise ValueError(f"limit must be an integer from 1 to {MAX_PAGE}, got {limit!r}")
    return limit


_rec = recommendations_table.c
# Built once: the fallback path runs it per request and the statement cache does the rest.
# The columns of a `PersistedRecommendation`, in its field order (`persisted_from_row`).
NEWEST_COLUMNS = (
    _rec.user_id,
    _rec.market_date,
    _rec.market,
    _rec.generated_at,
    _rec.base_currency,
    _rec.total_investable,
    _rec.criteria_version,
    _rec.correlation_id,
    # Text, not parsed documents: the caller hands them on as they are.
    cast(_rec.payload, Text).label("payload_json"),
    cast(_rec.portfolio, Text).label("portfolio_json"),
)
_NEWEST_RECOMMENDATION = (
    select(*NEWEST_COLUMNS)
    .where(_rec.user_id == bindparam("user_id", type_=_rec.user_id.type))
    .order_by(_rec.market_date.desc(), _rec.generated_at.desc())
    .limit(1)
)


def newest_recommendation(
    conn: Connection, *, user_id: uuid.UUID
) -> PersistedRecommendation | None:
    """The user's newest persisted recommendations: latest market date, then generation time.

    Ordered by the primary key (user_id, market_date), so a backfill of an older date
    generated later never becomes the newest.
    """
    row = conn.execute(_NEWEST_RECOMMENDATION, {"user_id": user_id}).first()
    if row is None:
        return None
    return PersistedRecommendation(**row._asdict())


def a_recommended_user(conn: Connection) -> uuid.UUID | None:
    """Some user with a persisted recommendation (the demo's example for a token), if any."""
    return conn.scalar(select(_rec.user_id).limit(1))


def persisted_from_row(row: Sequence[Any]) -> PersistedRecommendation:
    """A `PersistedRecommendation` from a raw psycopg row of `NEWEST_COLUMNS`."""
    (
        uid,
        market_date,
        market,
        generated_at,
        base_currency,
        total,
        criteria_version,
        correlation_id,
        payload_json,
        portfolio_json,
    ) = row
    return PersistedRecommendation(
        user_id=uid,
        market_date=market_date,
        market=market,
        generated_at=generated_at.astimezone(UTC),
        base_currency=base_currency,
        total_investable=Decimal(total),
        criteria_version=criteria_version,
        correlation_id=correlation_id,
        payload_json=payload_json,
        portfolio_json=portfolio_json,
    )


@dataclass(frozen=True)
class UserProfile:
    base_currency: str
    default_contribution: Decimal | None
    active: bool


def user_profile(conn: Connection, *, user_id: uuid.UUID) -> UserProfile | None:
    """A user's base currency and default contribution (what a new user's dashboard shows)."""
    u = users_table.c
    row = conn.execute(
        select(u.base_currency, u.default_contribution, u.active).where(u.id == user_id)
    ).first()
    return None if row is None else UserProfile(**row._asdict())


def holding_classes(conn: Connection, *, user_id: uuid.UUID) -> dict[uuid.UUID, str]:
    """The asset class of each asset the user holds, by asset id (the dashboard page)."""
    h, c = holdings_table.c, asset_classes_table.c
    rows = conn.execute(
        select(h.asset_id, c.name)
        .join(asset_classes_table, (c.user_id == h.user_id) & (c.id == h.asset_class_id))
        .where(h.user_id == user_id)
    )
    return {asset_id: name for asset_id, name in rows}


def asset_id_for(conn: Connection, *, market: str, symbol: str) -> uuid.UUID | None:
    """The id of the asset `(market, symbol)`, by its unique index."""
    a = assets_table.c
    found: uuid.UUID | None = conn.execute(
        select(a.id).where(a.market == market, a.symbol == symbol)
    ).scalar_one_or_none()
    return found


def _calculation_elements(dialect: str) -> tuple[FromClause, Any, Any]:
    """`calculation_assets` joined with its arrays' elements, one row per (row, user): the
    FROM clause, the user id and the score. PostgreSQL unnests the two arrays side by side;
    SQLite walks the ids with `json_each` and takes the score at the same position."""
    ca = calculation_assets_table
    if dialect == "postgresql":
        each = (
            func.unnest(ca.c.user_ids, ca.c.scores)
            .table_valued(column("user_id", Uuid()), column("score", ExactDecimal(16, 4)))
            .render_derived(name="e")
            .lateral()
        )
        return ca.join(each, true()), each.c.user_id, each.c.score
    ids = func.json_each(ca.c.user_ids).table_valued("key", "value").alias("e")
    user_id = type_coerce(ids.c.value, Uuid())
    score = type_coerce(
        func.json_extract(ca.c.scores, literal("$[") + cast(ids.c.key, Text) + literal("]")),
        ExactDecimal(16, 4),
    )
    return ca.join(ids, true()), user_id, score


def _one_users_elements() -> tuple[FromClause, Any, Any, Any]:
    """PostgreSQL, one user's calculations: the rows whose ids hold the user (`user_id`),
    its score found by `array_position` (a scan of the ids in C, ≈ 8 times faster than
    unnesting the bucket's users: docs/PERFORMANCE.md, "The asset-X index as arrays"); the
    FROM clause, the user id, the score and the criterion."""
    ca = calculation_assets_table
    user = cast(bindparam("user_id", type_=Uuid()), Uuid())
    at = func.array_position(ca.c.user_ids, user)
    score = type_coerce(ca.c.scores[at], ExactDecimal(16, 4))
    return ca, user, score, at.is_not(None)


@functools.cache
def _calculations_query(dialect: str, *, by_user: bool, after: bool) -> Select[Any]:
    """The statement of one shape of `calculations_for_asset`, built once (the statement
    cache then does the rest: building it took longer than the query), its values as
    parameters (`_calculation_params`)."""
    ca = calculation_assets_table.c
    if by_user and dialect == "postgresql":
        source, user, score, holds = _one_users_elements()
    else:
        source, user, score = _calculation_elements(dialect)
        holds = user == bindparam("user_id", type_=Uuid())
    stmt = (
        select(
            ca.asset_id,
            ca.correlation_id,
            user.label("user_id"),
            score.label("score"),
            ca.calculated_at,
        )
        .select_from(source)
        .where(ca.asset_id == bindparam("asset_id", type_=Uuid()))
    )
    if by_user:
        stmt = stmt.where(ca.bucket == bindparam("bucket", type_=SmallInteger()), holds)
    if after:
        at = bindparam("before_at", type_=UTCDateTime())
        stmt = stmt.where(
            # The rows' part of the cursor, in the index; then the elements'.
            ca.calculated_at <= at,
            tuple_(ca.calculated_at, ca.correlation_id, user)
            < tuple_(
                at,
                bindparam("before_correlation_id", type_=Uuid()),
                bindparam("before_user_id", type_=Uuid()),
            ),
        )
    # The bucket is the user id's first hex digit: ordering by it before the user id
    # changes nothing, and lets the operator's page sort one bucket of the newest
    # calculation (the index's order) instead of all its users.
    order = [ca.calculated_at.desc(), ca.correlation_id.desc(), ca.bucket.desc()]
    if not by_user or dialect != "postgresql":  # (one user's: always the same)
        order.append(user.desc())
    return stmt.order_by(*order).limit(bindparam("limit", type_=Integer()))


def _calculation_params(
    asset_id: uuid.UUID,
    user_id: uuid.UUID | None,
    limit: int,
    before: CalculationCursor | None,
) -> dict[str, Any]:
    params: dict[str, Any] = {"asset_id": asset_id, "limit": _limit(limit)}
    if user_id is not None:
        params.update(user_id=user_id, bucket=bucket_of(user_id))
    if before is not None:
        params.update(
            before_at=before.calculated_at,
            before_correlation_id=before.correlation_id,
            before_user_id=before.user_id,
        )
    return params


def calculations_statement(
    *,
    asset_id: uuid.UUID,
    user_id: uuid.UUID | None = None,
    limit: int,
    before: CalculationCursor | None = None,
    dialect: str = "postgresql",
) -> Select[Any]:
    """The statement behind `calculations_for_asset`, its values bound (tests EXPLAIN it)."""
    stmt = _calculations_query(dialect, by_user=user_id is not None, after=before is not None)
    return stmt.params(_calculation_params(asset_id, user_id, limit, before))


def calculations_for_asset(
    conn: Connection,
    *,
    asset_id: uuid.UUID,
    user_id: uuid.UUID | None = None,
    limit: int,
    before: CalculationCursor | None = None,
) -> list[AssetCalculation]:
    """ "All calculations for asset X" (BEHAVIOUR §4): newest first, keyset-paginated.

    Served by `ix_calculation_assets_asset_newest (asset_id, calculated_at, correlation_id,
    bucket)`, never a text scan; with `user_id`, only that user's calculations, from the
    rows of its bucket (`ix_calculation_assets_asset_bucket (asset_id, bucket,
    calculated_at, correlation_id)`) whose arrays hold it. Pass the last row's `cursor` as
    `before` for the next page.
    """
    params = _calculation_params(asset_id, user_id, limit, before)
    stmt = _calculations_query(
        conn.dialect.name, by_user=user_id is not None, after=before is not None
    )
    return [AssetCalculation(**row._asdict()) for row in conn.execute(stmt, params)]


def recent_job_runs(
    conn: Connection,
    *,
    market: str | None = None,
    status: str | None = None,
    limit: int,
    before: datetime | None = None,
) -> list[JobRun]:
    """Recent `overnight_job_runs`, newest start first, optionally by market and status."""
    j = overnight_job_runs_table.c
    stmt = select(
        j.id,
        j.run_id,
        j.job_type,
        j.status,
        j.market,
        j.market_date,
        j.started_at,
        j.completed_at,
        j.users_processed,
        j.users_failed,
        j.correlation_id,
        j.error_details,
        j.metrics,
    )
    if market is not None:
        stmt = stmt.where(j.market == market)
    if status is not None:
        stmt = stmt.where(j.status == status)
    if before is not None:
        stmt = stmt.where(j.started_at < before)
    stmt = stmt.order_by(j.started_at.desc(), j.id.desc()).limit(_limit(limit))
    return [JobRun(**row._asdict()) for row in conn.execute(stmt)]


@dataclass(frozen=True)
class FinishedRun:
    """A run of one market that has finished: what the dashboard's metrics count."""

    market: str
    status: str  # completed | partial | failed
    completed_at: datetime
    users_failed: int


def finished_runs(conn: Connection, *, since: datetime) -> list[FinishedRun]:
    """Runs of one market (`market` set) that finished at or after `since`, oldest first:
    one statement for every market."""
    j = overnight_job_runs_table.c
    stmt = (
        select(j.market, j.status, j.completed_at, j.users_failed)
        .where(
            j.job_type == "overnight",
            j.market.is_not(None),
            j.status.in_(("completed", "partial", "failed")),
            j.completed_at >= since,
        )
        .order_by(j.completed_at)
    )
    return [FinishedRun(*row) for row in conn.execute(stmt)]
