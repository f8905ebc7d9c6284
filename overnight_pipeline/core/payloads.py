"""Cache payloads (BEHAVIOUR §5) and the dashboard response (§6): the camelCase fields that
BEHAVIOUR §5 lists, with `schemaVersion` and the owner's `userId` in both documents; decimals
as strings.

Two views of the same contract. The pydantic models build the documents (the pipeline) and
give the page typed objects. `check_documents` is the reader's gate on the hot path: it
validates a whole cached entry straight from its JSON bytes inside pydantic-core (typed
dicts, strict types, regex-bounded decimal strings, an ISO 4217 literal; its cost per read:
docs/PERFORMANCE.md, "Every hit validated in full"). Whatever the models write passes it
(tested).
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any, Literal

from iso4217 import Currency as Iso4217
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    with_config,
)
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict

from overnight_pipeline.core.money import DecimalString, quantum
from overnight_pipeline.core.recommendations import PERCENT_PLACES, UserRecommendations

# 2: `userId` in the portfolio document too. Entries of another version are misses.
SCHEMA_VERSION: Literal[2] = 2
LEGACY_SCHEMA_VERSION = 1

# Bounds of the contract, shared by the models (writer) and the reader's gate. Decimals fit
# NUMERIC(28, 10) (18 integer digits, 10 places); strings fit their columns.
INTEGER_DIGITS, DECIMAL_PLACES = 18, 10
MAX_RECOMMENDATIONS = 10_000
MAX_CLASSES = 1_000
MAX_CRITERIA = 10_000
MAX_ASSETS = 1_000_000
# Larger than any document the pipeline writes by far (their size: docs/PERFORMANCE.md,
# "Every hit validated in full").
MAX_DOCUMENT_BYTES = 1_048_576
# ISO 4217 from the `iso4217` package, as core.money uses it: not a hand-typed list.
CURRENCIES: frozenset[str] = frozenset(c.code for c in Iso4217)

_INT = rf"(?:0|[1-9][0-9]{{0,{INTEGER_DIGITS - 1}}})"
_FRAC = rf"(?:\.[0-9]{{1,{DECIMAL_PLACES}}})?"
# Plain notation only ("1E+3", "NaN", "Infinity", " 1" fail); "-0.00" is zero, not negative.
SIGNED_DECIMAL = rf"^-?{_INT}{_FRAC}$"
NON_NEGATIVE_DECIMAL = rf"^(?:{_INT}{_FRAC}|-0(?:\.0{{1,{DECIMAL_PLACES}}})?)$"
PERCENT = rf"^(?:100(?:\.0{{1,{DECIMAL_PLACES}}})?|[1-9]?[0-9]{_FRAC})$"
ISO_TIME = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
    r"(?:Z|[+-][0-9]{2}:[0-9]{2})$"
)
NON_NEGATIVE_DECIMAL_RE = re.compile(NON_NEGATIVE_DECIMAL)


def _iso_currency(code: str) -> str:
    if code not in CURRENCIES:
        raise ValueError(f"{code!r} is not an ISO 4217 currency code")
    return code


def _within_bounds(value: Decimal) -> Decimal:
    _, digits, exponent = value.as_tuple()
    places = -exponent if isinstance(exponent, int) and exponent < 0 else 0
    if places > DECIMAL_PLACES or len(digits) - places > INTEGER_DIGITS:
        raise ValueError(
            f"{value} does not fit {INTEGER_DIGITS} integer digits and {DECIMAL_PLACES} places"
        )
    return value


Currency = Annotated[str, AfterValidator(_iso_currency)]
Signed = Annotated[DecimalString, AfterValidator(_within_bounds)]
NonNegative = Annotated[DecimalString, Field(ge=0), AfterValidator(_within_bounds)]
Percent = Annotated[DecimalString, Field(ge=0, le=100), AfterValidator(_within_bounds)]
AssetId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Symbol = Annotated[str, StringConstraints(min_length=1, max_length=32)]
ClassName = Annotated[str, StringConstraints(min_length=1, max_length=100)]
Label = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class _Strict(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class Breakdown(_Strict):
    criteria_count: int = Field(ge=0, le=MAX_CRITERIA)
    top_contributor: Label | None


class CachedRecommendation(_Strict):
    asset_id: AssetId
    symbol: Symbol
    score: Signed
    amount: NonNegative
    currency: Currency
    allocation_gap: Signed
    breakdown: Breakdown


class PortfolioSummary(_Strict):
    total_value: NonNegative
    base_currency: Currency
    allocations: Annotated[dict[ClassName, Percent], Field(max_length=MAX_CLASSES)]


class DataFreshness(_Strict):
    prices_as_of: AwareDatetime | None
    rates_as_of: AwareDatetime | None
    criteria_version: Label | None


class CachedRecommendations(_Strict):
    """`recs:{userId}`."""

    schema_version: Literal[2] = SCHEMA_VERSION
    user_id: uuid.UUID
    generated_at: AwareDatetime
    recommendations: Annotated[list[CachedRecommendation], Field(max_length=MAX_RECOMMENDATIONS)]
    portfolio_summary: PortfolioSummary
    data_freshness: DataFreshness


class ClassAllocation(_Strict):
    class_name: ClassName
    current_percent: Percent
    target_min: Percent
    target_max: Percent


class CachedPortfolioSummary(_Strict):
    """`portfolio:{userId}`."""

    schema_version: Literal[2] = SCHEMA_VERSION
    user_id: uuid.UUID
    total_value: NonNegative
    asset_count: int = Field(ge=0, le=MAX_ASSETS)
    allocations: Annotated[list[ClassAllocation], Field(max_length=MAX_CLASSES)]


class DashboardData(_Strict):
    recommendations: list[CachedRecommendation]
    total_investable: DecimalString
    base_currency: str
    data_freshness: datetime | None
    from_cache: bool
    inputs_changed_at: datetime | None = Field(
        description="When the user's inputs changed after the served result was generated "
        "(`dataFreshness`), or with nothing served yet, changed at all: a recalculation is "
        "on its way and the result shown predates the change. Null otherwise."
    )


class DashboardResponse(_Strict):
    data: DashboardData


# The reader's gate ----------------------------------------------------------------------
# The same contract as typed dicts of strings: pydantic-core checks every field without a
# Python call (except the three timestamps) and hands back plain dicts, ready to re-serialise.


def _iso_time(value: str) -> str:
    datetime.fromisoformat(value)  # the calendar: no 2026-02-30, no 25:00
    return value


_WIRE = ConfigDict(extra="forbid", strict=True)
_Signed = Annotated[str, StringConstraints(pattern=SIGNED_DECIMAL)]
_NonNegative = Annotated[str, StringConstraints(pattern=NON_NEGATIVE_DECIMAL)]
_Percent = Annotated[str, StringConstraints(pattern=PERCENT)]
_Time = Annotated[str, StringConstraints(pattern=ISO_TIME), AfterValidator(_iso_time)]
# A literal of every code: one hash lookup in pydantic-core.
if TYPE_CHECKING:
    _Currency = str
else:
    _Currency = Literal[tuple(sorted(CURRENCIES))]
_UserId = Annotated[str, StringConstraints(min_length=36, max_length=36)]


@with_config(_WIRE)
class _WireBreakdown(TypedDict):
    criteriaCount: Annotated[int, Field(ge=0, le=MAX_CRITERIA)]
    topContributor: Label | None


@with_config(_WIRE)
class _WireRecommendation(TypedDict):
    assetId: AssetId
    symbol: Symbol
    score: _Signed
    amount: _NonNegative
    currency: _Currency
    allocationGap: _Signed
    breakdown: _WireBreakdown


@with_config(_WIRE)
class _WireSummary(TypedDict):
    totalValue: _NonNegative
    baseCurrency: _Currency
    allocations: Annotated[dict[ClassName, _Percent], Field(max_length=MAX_CLASSES)]


@with_config(_WIRE)
class _WireFreshness(TypedDict):
    pricesAsOf: _Time | None
    ratesAsOf: _Time | None
    criteriaVersion: Label | None


@with_config(_WIRE)
class WireRecommendations(TypedDict):
    """`recs:{userId}` as the reader gets it: plain JSON values, all checked."""

    schemaVersion: Literal[2]
    userId: _UserId
    generatedAt: _Time
    recommendations: Annotated[list[_WireRecommendation], Field(max_length=MAX_RECOMMENDATIONS)]
    portfolioSummary: _WireSummary
    dataFreshness: _WireFreshness


@with_config(_WIRE)
class _WireAllocation(TypedDict):
    className: ClassName
    currentPercent: _Percent
    targetMin: _Percent
    targetMax: _Percent


@with_config(_WIRE)
class WirePortfolio(TypedDict):
    schemaVersion: Literal[2]
    userId: _UserId
    totalValue: _NonNegative
    assetCount: Annotated[int, Field(ge=0, le=MAX_ASSETS)]
    allocations: Annotated[list[_WireAllocation], Field(max_length=MAX_CLASSES)]


_RECS = TypeAdapter(WireRecommendations)
_PORTFOLIO = TypeAdapter(WirePortfolio)


class InvalidDocument(ValueError):
    """A document that fails the contract; `reason` is short enough for a log line/metric."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _reason(document: str, exc: ValidationError) -> str:
    first = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or "(root)"
    return f"{document}: {where}: {first['type']}"


def check_documents(
    recs_json: bytes | str, portfolio_json: bytes | str, user_key: str
) -> tuple[WireRecommendations, WirePortfolio]:
    """Both documents of one entry, validated in full and owned by `user_key`; else
    `InvalidDocument`."""
    if len(recs_json) > MAX_DOCUMENT_BYTES or len(portfolio_json) > MAX_DOCUMENT_BYTES:
        raise InvalidDocument("document larger than the contract allows")
    try:
        recs = _RECS.validate_json(recs_json)
    except ValidationError as exc:
        raise InvalidDocument(_reason("recs", exc)) from None
    try:
        portfolio = _PORTFOLIO.validate_json(portfolio_json)
    except ValidationError as exc:
        raise InvalidDocument(_reason("portfolio", exc)) from None
    _check_together(recs, portfolio, user_key)
    return recs, portfolio


def check_objects(
    recs: Any, portfolio: Any, user_key: str
) -> tuple[WireRecommendations, WirePortfolio]:
    """`check_documents` for already-parsed JSON values."""
    try:
        checked = _RECS.validate_python(recs)
    except ValidationError as exc:
        raise InvalidDocument(_reason("recs", exc)) from None
    try:
        summary = _PORTFOLIO.validate_python(portfolio)
    except ValidationError as exc:
        raise InvalidDocument(_reason("portfolio", exc)) from None
    _check_together(checked, summary, user_key)
    return checked, summary


def _check_together(recs: WireRecommendations, portfolio: WirePortfolio, user_key: str) -> None:
    if recs["userId"] != user_key:
        raise InvalidDocument("recs: userId is another user's")
    if portfolio["userId"] != user_key:
        raise InvalidDocument("portfolio: userId is another user's")
    if recs["portfolioSummary"]["totalValue"] != portfolio["totalValue"]:
        raise InvalidDocument("portfolio: totalValue differs from the recs document's")


def upgrade_legacy(recs: Any, portfolio: Any, user_id: uuid.UUID) -> tuple[Any, Any]:
    """Version-1 documents (persisted before `userId` joined the portfolio document) as
    version 2: the owner is the row's user. Anything else is returned as it is."""
    if (
        type(recs) is dict
        and type(portfolio) is dict
        and recs.get("schemaVersion") == LEGACY_SCHEMA_VERSION
        and portfolio.get("schemaVersion") == LEGACY_SCHEMA_VERSION
        and "userId" not in portfolio
    ):
        recs = {**recs, "schemaVersion": SCHEMA_VERSION}
        portfolio = {
            "schemaVersion": SCHEMA_VERSION,
            "userId": str(user_id),
            **{k: v for k, v in portfolio.items() if k != "schemaVersion"},
        }
    return recs, portfolio


def parse_time(value: str) -> datetime:
    """A timestamp the gate accepted, as an aware UTC datetime."""
    return datetime.fromisoformat(value).astimezone(UTC)


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
        user_id=user_id,
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
