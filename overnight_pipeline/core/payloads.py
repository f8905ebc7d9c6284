"""Cache payloads (SPEC §5) and the dashboard response (§6): camelCase exactly as the
original spec's TypeScript interfaces, plus `schemaVersion`; decimals as strings."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from overnight_pipeline.core.money import DecimalString, quantum
from overnight_pipeline.core.recommendations import PERCENT_PLACES, UserRecommendations

SCHEMA_VERSION: Literal[1] = 1


class _Strict(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class Breakdown(_Strict):
    criteria_count: int = Field(ge=0)
    top_contributor: str | None


class CachedRecommendation(_Strict):
    asset_id: str
    symbol: str
    score: DecimalString
    amount: DecimalString = Field(ge=0)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    allocation_gap: DecimalString
    breakdown: Breakdown


class PortfolioSummary(_Strict):
    total_value: DecimalString
    base_currency: str = Field(pattern=r"^[A-Z]{3}$")
    allocations: dict[str, DecimalString]


class DataFreshness(_Strict):
    prices_as_of: datetime | None
    rates_as_of: datetime | None
    criteria_version: str | None


class CachedRecommendations(_Strict):
    """`recs:{userId}`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    user_id: uuid.UUID
    generated_at: datetime
    recommendations: list[CachedRecommendation]
    portfolio_summary: PortfolioSummary
    data_freshness: DataFreshness


class ClassAllocation(_Strict):
    class_name: str
    current_percent: DecimalString
    target_min: DecimalString
    target_max: DecimalString


class CachedPortfolioSummary(_Strict):
    """`portfolio:{userId}`."""

    schema_version: Literal[1] = SCHEMA_VERSION
    total_value: DecimalString
    asset_count: int = Field(ge=0)
    allocations: list[ClassAllocation]


class DashboardData(_Strict):
    recommendations: list[CachedRecommendation]
    total_investable: DecimalString
    base_currency: str
    data_freshness: datetime | None
    from_cache: bool


class DashboardResponse(_Strict):
    data: DashboardData


def _pct(value: Decimal) -> Decimal:
    return value.quantize(PERCENT_PLACES)


def cache_payloads(
    user_id: uuid.UUID, result: UserRecommendations, *, generated_at: datetime, asset_count: int
) -> tuple[CachedRecommendations, CachedPortfolioSummary]:
    """The two cache documents of one user's result."""
    total = result.total_value.quantize(quantum(result.base_currency))
    recs = CachedRecommendations(
        user_id=user_id,
        generated_at=generated_at,
        recommendations=[
            CachedRecommendation(
                asset_id=r.asset_id,
                symbol=r.symbol,
                score=r.score,
                amount=r.amount,
                currency=r.currency,
                allocation_gap=r.allocation_gap,
                breakdown=Breakdown(
                    criteria_count=r.criteria_count, top_contributor=r.top_contributor
                ),
            )
            for r in result.recommendations
        ],
        portfolio_summary=PortfolioSummary(
            total_value=total,
            base_currency=result.base_currency,
            allocations={c.name: _pct(c.current_percent) for c in result.classes},
        ),
        data_freshness=DataFreshness(
            prices_as_of=result.prices_as_of,
            rates_as_of=result.rates_as_of,
            criteria_version=None
            if result.criteria_version is None
            else str(result.criteria_version),
        ),
    )
    summary = CachedPortfolioSummary(
        total_value=total,
        asset_count=asset_count,
        allocations=[
            ClassAllocation(
                class_name=c.name,
                current_percent=_pct(c.current_percent),
                target_min=c.target_min,
                target_max=c.target_max,
            )
            for c in result.classes
        ],
    )
    return recs, summary
