"""Buy-only recommendations for one user's contribution (SPEC §3).

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
from typing import NamedTuple

from overnight_pipeline.core.allocation import (
    BELOW_MINIMUM,
    EXACT,
    NO_ELIGIBLE_ASSET,
    ClassInput,
    ValuePart,
    allocate_exact,
    score_weights,
    water_fill,
)
from overnight_pipeline.core.money import FxRates, minor_unit
from overnight_pipeline.core.scoring import AssetScore

ZERO = Decimal(0)
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


class Pick(NamedTuple):
    """An eligible asset of a class, as the allocation needs it."""

    asset_id: str
    symbol: str
    score: Decimal
    criteria_count: int
    top_contributor: str | None


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
    """Recommendations for one user; a missing exchange rate raises `MissingRateError`."""
    # 1. Values in the base currency, exactly: priced holdings summed per class and
    # currency; holdings without a price are left out and reported.
    sums: dict[str, dict[str, Decimal]] = {}
    priced = [h for h in holdings if h.price is not None]
    for h in priced:
        assert h.price is not None
        by_currency = sums.setdefault(h.asset_class, {})
        product = EXACT.multiply(h.quantity, h.price)
        previous = by_currency.get(h.currency)
        by_currency[h.currency] = product if previous is None else EXACT.add(previous, product)
    parts = {
        name: [ValuePart(amount, *fx.ratio(cur, base_currency)) for cur, amount in by.items()]
        for name, by in sums.items()
    }

    # 3. Eligible assets per class: priced, score > 0, by score desc then symbol.
    eligible: dict[str, list[Pick]] = {}
    for c in classes:
        picks = [
            Pick(h.asset_id, h.symbol, s.score, s.criteria_count, s.top_contributor)
            for h in priced
            if h.asset_class == c.name and (s := scores.get(h.asset_id)) is not None and s.score > 0
        ]
        picks.sort(key=lambda p: (-p.score, p.symbol))
        eligible[c.name] = picks[: c.max_assets] if c.max_assets else picks
    prices_used = [h.price_as_of for h in priced if h.price_as_of is not None]
    return allocate(
        base_currency=base_currency,
        contribution=contribution,
        classes=classes,
        parts=parts,
        eligible=eligible,
        prices_as_of=min(prices_used) if prices_used else None,
        rates_as_of=fx.as_of,
        criteria_version=criteria_version,
        missing_prices=tuple(h.symbol for h in holdings if h.price is None),
    )


def allocate(
    *,
    base_currency: str,
    contribution: Decimal | None,
    classes: Sequence[ClassSpec],
    parts: Mapping[str, Sequence[ValuePart]],
    eligible: Mapping[str, Sequence[Pick]],
    prices_as_of: datetime | None,
    rates_as_of: datetime | None,
    criteria_version: int | None,
    missing_prices: tuple[str, ...] = (),
    weights: Mapping[str, Sequence[int]] | None = None,
) -> UserRecommendations:
    """Steps 2 and 4-7 of SPEC §3 from each class's value (step 1, as exact parts per
    currency) and eligible assets (step 3), on exact values (`core.allocation`); shared by
    the one-user and the batch paths. `weights`: the picks' scores as integers in one scale
    (computed from the scores when not given)."""
    names = [c.name for c in classes]
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"asset class {twice!r} appears twice")
    picks = [eligible.get(c.name, ()) for c in classes]
    ids = [p.asset_id for row in picks for p in row]
    if len(set(ids)) != len(ids):
        twice = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"asset {twice!r} is held twice")
    if weights is None:
        flat = score_weights([p.score for row in picks for p in row])
        it = iter(flat)
        weight_rows: list[Sequence[int]] = [[next(it) for _ in row] for row in picks]
    else:
        weight_rows = [weights.get(c.name, ()) for c in classes]
    known = set(names)
    extra = [p for name, row in parts.items() if name not in known for p in row]
    c_total = contribution if contribution is not None else ZERO
    digits = minor_unit(base_currency)
    result = allocate_exact(
        c_total,
        digits,
        [
            ClassInput(
                c.target_min,
                c.target_max,
                c.min_allocation_value,
                parts.get(c.name, ()),
                w,
                row,
            )
            for c, row, w in zip(classes, picks, weight_rows, strict=True)
        ],
        extra,
    )

    # 7. Output.
    recs = []
    class_amount = []
    for k, c in enumerate(classes):
        gap = result.gaps[k]
        got = 0
        for p, u in zip(picks[k], result.units[k], strict=True):
            if u:
                got += u
                recs.append(
                    RecommendedAsset(
                        p.asset_id,
                        p.symbol,
                        c.name,
                        p.score,
                        Decimal(u).scaleb(-digits, EXACT),
                        base_currency,
                        gap,
                        p.criteria_count,
                        p.top_contributor,
                    )
                )
        class_amount.append(Decimal(got).scaleb(-digits, EXACT))
    recs.sort(key=lambda r: (-r.amount, -r.score, r.symbol))
    allocated = Decimal(result.allocated_units).scaleb(-digits, EXACT)
    return UserRecommendations(
        base_currency=base_currency,
        contribution=c_total,
        total_value=result.total,
        recommendations=tuple(recs),
        unallocated=EXACT.subtract(c_total, allocated),
        classes=tuple(
            ClassResult(
                c.name,
                result.values[k],
                result.percents[k],
                c.target_min,
                c.target_max,
                result.gaps[k],
                class_amount[k],
                result.status[k],
            )
            for k, c in enumerate(classes)
        ),
        prices_as_of=prices_as_of,
        rates_as_of=rates_as_of,
        criteria_version=criteria_version,
        missing_prices=missing_prices,
    )
