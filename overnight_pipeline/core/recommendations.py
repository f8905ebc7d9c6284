"""Buy-only recommendations for one user's contribution (BEHAVIOUR §3).

Steps, as numbered in the spec: (1) value holdings in the base currency, (2) class targets
after the contribution and allocation gaps, (3) eligible assets, (4) water-filling across
classes toward the band mid then max, (5) score-proportional split with `min_allocation_value`,
(6) largest-remainder rounding to the minor unit, (7) the output.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import NamedTuple

from overnight_pipeline.core.allocation import (
    BELOW_MINIMUM,
    EXACT,
    NO_ELIGIBLE_ASSET,
    Allocation,
    ClassTable,
    add_ratio,
    allocate_exact,
    score_weights,
    water_fill,
)
from overnight_pipeline.core.money import FxRates, minor_unit
from overnight_pipeline.core.scoring import AssetScore

ZERO = Decimal(0)
_SYMBOL = attrgetter("symbol")
_AMOUNT_SCORE = attrgetter("amount", "score")
HUNDRED = Decimal(100)
PERCENT_PLACES = Decimal("0.01")

__all__ = ["BELOW_MINIMUM", "NO_ELIGIBLE_ASSET", "water_fill"]


class ClassSpec(NamedTuple):
    name: str
    target_min: Decimal
    target_max: Decimal
    max_assets: int | None = None
    min_allocation_value: Decimal | None = None

    @property
    def target_mid(self) -> Decimal:
        return (self.target_min + self.target_max) / 2


class HoldingInput(NamedTuple):
    asset_id: str
    symbol: str
    asset_class: str
    quantity: Decimal
    currency: str
    price: Decimal | None
    price_as_of: datetime | None = None


class RecommendedAsset(NamedTuple):
    asset_id: str
    symbol: str
    asset_class: str
    score: Decimal
    amount: Decimal
    currency: str
    allocation_gap: Decimal
    criteria_count: int
    top_contributor: str | None


class ClassResult(NamedTuple):
    """A class after the allocation; values, percents and gaps are rounded half-even from
    their exact values (the minor unit; 2 dp)."""

    name: str
    current_value: Decimal
    current_percent: Decimal
    target_min: Decimal
    target_max: Decimal
    allocation_gap: Decimal
    amount: Decimal
    status: str | None  # None, NO_ELIGIBLE_ASSET or BELOW_MINIMUM


@dataclass(frozen=True)
class UserRecommendations:
    """One user's result; `total_value` is the portfolio's exact value rounded half-even
    to the base currency's minor unit."""

    base_currency: str
    contribution: Decimal
    total_value: Decimal
    recommendations: tuple[RecommendedAsset, ...]
    unallocated: Decimal
    classes: tuple[ClassResult, ...]
    prices_as_of: datetime | None
    rates_as_of: datetime | None
    criteria_version: int | None
    missing_prices: tuple[str, ...] = field(default=())

    @property
    def allocated(self) -> Decimal:
        return sum((r.amount for r in self.recommendations), ZERO)


class Picks(NamedTuple):
    """Eligible assets as columns (one entry per pick; a class's picks contiguous, by score
    desc then symbol): what the output needs of each, and its score as an integer in a
    scale shared by the user's picks (`weight`), which the allocation splits by."""

    asset_id: Sequence[str]
    symbol: Sequence[str]
    score: Sequence[Decimal]
    criteria_count: Sequence[int]
    top_contributor: Sequence[str | None]
    weight: Sequence[int]


def recommend(
    *,
    base_currency: str,
    contribution: Decimal | None,
    classes: Sequence[ClassSpec],
    holdings: Sequence[HoldingInput],
    scores: Mapping[str, AssetScore],
    fx: FxRates,
    criteria_version: int | None = None,
) -> UserRecommendations:
    """Recommendations for one user; a missing exchange rate raises `MissingRateError`,
    the same class or asset twice a `ValueError`."""
    index = {c.name: k for k, c in enumerate(classes)}
    # 1. Values in the base currency, exactly; holdings without a price are left out.
    values = [(0, 1)] * len(classes)
    extra = (0, 1)  # priced holdings of a class the user does not have: in the total only
    priced = [h for h in holdings if h.price is not None]
    for h in priced:
        assert h.price is not None
        rate = fx.ratio(h.currency, base_currency)
        product = EXACT.multiply(h.quantity, h.price)
        k = index.get(h.asset_class)
        if k is None:
            extra = add_ratio(extra, product, *rate)
        else:
            values[k] = add_ratio(values[k], product, *rate)

    # 3. Eligible assets per class: priced, score > 0, by score desc then symbol.
    table = ClassTable()
    chosen: list[tuple[HoldingInput, AssetScore]] = []
    for k, c in enumerate(classes):
        mine = [
            (h, s)
            for h in priced
            if h.asset_class == c.name and (s := scores.get(h.asset_id)) is not None and s.score > 0
        ]
        mine.sort(key=lambda p: (-p[1].score, p[0].symbol))
        start = len(chosen)
        chosen.extend(mine[: c.max_assets] if c.max_assets else mine)
        table.add(
            c.target_min, c.target_max, c.min_allocation_value, values[k], (start, len(chosen))
        )
    ids = [h.asset_id for h, _ in chosen]
    check_unique(classes, ids)
    picks = Picks(
        ids,
        [h.symbol for h, _ in chosen],
        [s.score for _, s in chosen],
        [s.criteria_count for _, s in chosen],
        [s.top_contributor for _, s in chosen],
        score_weights([s.score for _, s in chosen]),
    )
    c_total = contribution if contribution is not None else ZERO
    prices_used = [h.price_as_of for h in priced if h.price_as_of is not None]
    return result_of(
        base_currency,
        c_total,
        allocate_exact(
            c_total,
            minor_unit(base_currency),
            extra,
            table,
            0,
            len(classes),
            picks.weight,
            picks.symbol,
        ),
        classes,
        0,
        picks,
        prices_as_of=min(prices_used) if prices_used else None,
        rates_as_of=fx.as_of,
        criteria_version=criteria_version,
        missing_prices=tuple(h.symbol for h in holdings if h.price is None),
    )


def check_unique(classes: Sequence[ClassSpec], asset_ids: Sequence[str]) -> None:
    """A user's class names and eligible assets are each unique, or a `ValueError` names
    the first repeated one."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        twice = next(name for k, name in enumerate(names) if name in names[:k])
        raise ValueError(f"asset class {twice!r} appears twice")
    if len(set(asset_ids)) != len(asset_ids):
        again = next(a for k, a in enumerate(asset_ids) if a in asset_ids[:k])
        raise ValueError(f"asset {again!r} is held twice")


def result_of(
    base_currency: str,
    contribution: Decimal,
    allocation: Allocation,
    classes: Sequence[ClassSpec],
    first: int,
    picks: Picks,
    *,
    prices_as_of: datetime | None,
    rates_as_of: datetime | None,
    criteria_version: int | None,
    missing_prices: tuple[str, ...],
) -> UserRecommendations:
    """Step 7: the user's result from its allocation (`classes[first:]`: the user's
    classes, the rows the allocation read); shared by the one-user and the batch paths."""
    exponent = Decimal(-minor_unit(base_currency))
    n = len(allocation.status)
    gaps = allocation.gaps
    class_units = [0] * n
    recs = []
    asset_id, symbol, score = picks.asset_id, picks.symbol, picks.score
    criteria_count, top_contributor = picks.criteria_count, picks.top_contributor
    for k, j, u in allocation.units:
        i = k - first
        class_units[i] += u
        recs.append(
            RecommendedAsset._make(
                (
                    asset_id[j],
                    symbol[j],
                    classes[k].name,
                    score[j],
                    Decimal(u).scaleb(exponent, EXACT),
                    base_currency,
                    gaps[i],
                    criteria_count[j],
                    top_contributor[j],
                ),
            )
        )
    if len(recs) > 1:
        # By amount desc, score desc, symbol: two stable sorts, C-level keys.
        recs.sort(key=_SYMBOL)
        recs.sort(key=_AMOUNT_SCORE, reverse=True)
    allocated = Decimal(allocation.allocated_units).scaleb(exponent, EXACT)
    nothing = Decimal(0).scaleb(exponent, EXACT)
    return UserRecommendations(
        base_currency=base_currency,
        contribution=contribution,
        total_value=allocation.total,
        recommendations=tuple(recs),
        unallocated=EXACT.subtract(contribution, allocated),
        classes=tuple(
            [
                ClassResult._make(
                    (
                        c.name,
                        value,
                        percent,
                        c.target_min,
                        c.target_max,
                        gap,
                        Decimal(units).scaleb(exponent, EXACT) if units else nothing,
                        status,
                    ),
                )
                for c, value, percent, gap, units, status in zip(
                    classes[first : first + n],
                    allocation.values,
                    allocation.percents,
                    gaps,
                    class_units,
                    allocation.status,
                    strict=False,  # as many as the user's classes
                )
            ]
        ),
        prices_as_of=prices_as_of,
        rates_as_of=rates_as_of,
        criteria_version=criteria_version,
        missing_prices=missing_prices,
    )
