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
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from typing import NamedTuple

from overnight_pipeline.core.money import FxRates, quantum
from overnight_pipeline.core.scoring import AssetScore

ZERO = Decimal(0)
HUNDRED = Decimal(100)
PERCENT_PLACES = Decimal("0.01")

NO_ELIGIBLE_ASSET = "no_eligible_asset"
BELOW_MINIMUM = "below_minimum"


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
    # 1. Values in the base currency; holdings without a price are left out and reported.
    class_value = {c.name: ZERO for c in classes}
    priced = [h for h in holdings if h.price is not None]
    for h in priced:
        assert h.price is not None
        value = h.quantity * h.price * fx.rate(h.currency, base_currency)
        class_value[h.asset_class] = class_value.get(h.asset_class, ZERO) + value

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
        class_value=class_value,
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
    class_value: dict[str, Decimal],
    eligible: Mapping[str, Sequence[Pick]],
    prices_as_of: datetime | None,
    rates_as_of: datetime | None,
    criteria_version: int | None,
    missing_prices: tuple[str, ...] = (),
) -> UserRecommendations:
    """Steps 2 and 4-7 of SPEC §3 from the class values (step 1) and the eligible assets of
    each class (step 3); shared by the one-user and the batch paths."""
    q = quantum(base_currency)
    c_total = contribution if contribution is not None else ZERO
    total = sum(class_value.values(), ZERO)
    after = total + c_total

    # 2. Targets after the contribution, gaps before it.
    mid = {c.name: c.target_mid / HUNDRED * after for c in classes}
    hi = {c.name: c.target_max / HUNDRED * after for c in classes}
    current_pct = {
        c.name: (HUNDRED * class_value[c.name] / total) if total > 0 else ZERO for c in classes
    }
    gap = {c.name: c.target_mid - current_pct[c.name] for c in classes}
    status: dict[str, str | None] = {
        c.name: None if eligible.get(c.name) else NO_ELIGIBLE_ASSET for c in classes
    }

    # 4-5. Water-fill, split, and redo without a class whose amount is below its minimum.
    by_name = {c.name: c for c in classes}
    active = [c.name for c in classes if status[c.name] is None]
    while True:
        amounts, leftover = water_fill(
            c_total,
            {k: class_value[k] for k in active},
            {k: mid[k] for k in active},
            {k: hi[k] for k in active},
        )
        short = [
            k
            for k in active
            if by_name[k].min_allocation_value
            and ZERO < amounts[k] < by_name[k].min_allocation_value  # type: ignore[operator]
        ]
        if not short:
            break
        dropped = min(short, key=lambda k: (amounts[k], active.index(k)))
        status[dropped] = BELOW_MINIMUM
        active.remove(dropped)
    raw: dict[str, Decimal] = {}
    owner: dict[str, tuple[str, Pick]] = {}
    for k in active:
        picks = eligible[k]
        for p in picks:
            owner[p.asset_id] = (k, p)
        raw.update(split_by_score(amounts[k], picks, by_name[k].min_allocation_value))

    # 6. Largest remainder to the minor unit, never pushing a class past its max.
    cap = {k: hi[k] - class_value[k] for k in active}
    # What the classes absorb is known exactly (C − leftover); the split only approximates it.
    to_spend = (c_total - leftover).quantize(q, ROUND_DOWN)
    rounded = round_largest_remainder(raw, q, to_spend, owner, cap)

    # 7. Output.
    recs = []
    allocated = ZERO
    class_amount = {k: ZERO for k in class_value}
    for asset_id, amount in rounded.items():
        if amount > 0:
            k, p = owner[asset_id]
            recs.append(
                RecommendedAsset(
                    p.asset_id,
                    p.symbol,
                    k,
                    p.score,
                    amount,
                    base_currency,
                    gap[k].quantize(PERCENT_PLACES, ROUND_HALF_EVEN),
                    p.criteria_count,
                    p.top_contributor,
                )
            )
            allocated += amount
            class_amount[k] += amount
    recs.sort(key=lambda r: (-r.amount, -r.score, r.symbol))
    return UserRecommendations(
        base_currency=base_currency,
        contribution=c_total,
        total_value=total,
        recommendations=tuple(recs),
        unallocated=c_total - allocated,
        classes=tuple(
            ClassResult(
                c.name,
                class_value[c.name],
                current_pct[c.name],
                c.target_min,
                c.target_max,
                gap[c.name],
                class_amount[c.name],
                status[c.name],
            )
            for c in classes
        ),
        prices_as_of=prices_as_of,
        rates_as_of=rates_as_of,
        criteria_version=criteria_version,
        missing_prices=missing_prices,
    )


def water_fill(
    money: Decimal,
    value: Mapping[str, Decimal],
    mid: Mapping[str, Decimal],
    hi: Mapping[str, Decimal],
) -> tuple[dict[str, Decimal], Decimal]:
    """Split `money` across classes: raise them toward `mid` with one common fill level,
    then toward `hi` the same way; never above `hi`. Returns the (unrounded) amount per
    class and, exactly, the money no class could absorb."""
    amounts = {k: ZERO for k in value}
    if money <= 0 or not value:
        return amounts, max(money, ZERO)
    level1, rest = _fill(money, value, mid)
    for k, a in level1.items():
        amounts[k] += a
    if rest > 0:
        lifted = {k: value[k] + level1[k] for k in value}
        level2, rest = _fill(rest, lifted, hi)
        for k, a in level2.items():
            amounts[k] += a
    return amounts, rest


def _fill(
    money: Decimal, value: Mapping[str, Decimal], target: Mapping[str, Decimal]
) -> tuple[dict[str, Decimal], Decimal]:
    """Amounts so that each class holds max(value, f × target) for the one f ≤ 1 that spends
    `money` (or f = 1 when `money` is more than enough), and the money left over."""
    need = {k: max(ZERO, target[k] - value[k]) for k in value}
    needed = sum(need.values(), ZERO)
    if needed <= money:
        return need, money - needed
    # S(f) = Σ max(0, f·t_k − v_k) is piecewise linear; walk its breakpoints f_k = v_k / t_k.
    points = sorted(
        ((value[k] / target[k] if value[k] > 0 else ZERO), k) for k in value if target[k] > 0
    )
    t_sum = v_sum = ZERO
    f = ZERO
    for i, (_f_k, k) in enumerate(points):
        t_sum += target[k]
        v_sum += value[k]
        f = (money + v_sum) / t_sum
        next_break = points[i + 1][0] if i + 1 < len(points) else None
        if next_break is None or f <= next_break:
            break
    f = min(f, Decimal(1))
    amounts = {k: max(ZERO, f * target[k] - value[k]) if target[k] > 0 else ZERO for k in value}
    return amounts, ZERO


def split_by_score(
    amount: Decimal, eligible: Sequence[Pick], minimum: Decimal | None
) -> dict[str, Decimal]:
    """Split a class's amount in proportion to score; while an asset gets less than the
    class minimum, drop the lowest-scored such asset (ties: the later symbol) and re-split."""
    picks = list(eligible)
    while picks:
        total_score = sum((p.score for p in picks), ZERO)
        shares = {p.asset_id: amount * p.score / total_score for p in picks}
        if not minimum or amount <= 0:
            return shares
        low = [p for p in picks if shares[p.asset_id] < minimum]
        if not low:
            return shares
        worst = min(low, key=lambda p: (p.score, _desc(p.symbol)))
        picks.remove(worst)
    return {}


def _desc(symbol: str) -> tuple[int, ...]:
    # Sorting key that puts later symbols first among equal scores.
    return (*tuple(-ord(ch) for ch in symbol), 0)


def round_largest_remainder(
    raw: Mapping[str, Decimal],
    q: Decimal,
    total: Decimal,
    owner: Mapping[str, tuple[str, Pick]],
    cap: Mapping[str, Decimal],
) -> dict[str, Decimal]:
    """Round amounts down to `q`, then hand out the units left to reach `total` by largest
    remainder (ties: higher score, then symbol), skipping a unit that would push a class
    past its cap. `owner` maps an asset to its class and pick. Units nobody can take stay
    unallocated."""
    floors = {k: v.quantize(q, ROUND_DOWN) for k, v in raw.items()}
    units = int((total - sum(floors.values(), ZERO)) / q)
    if units <= 0:
        return floors
    class_total: dict[str, Decimal] = {}
    for k, v in floors.items():
        cls = owner[k][0]
        class_total[cls] = class_total.get(cls, ZERO) + v
    order = sorted(
        raw, key=lambda k: (-(raw[k] - floors[k]), -owner[k][1].score, owner[k][1].symbol)
    )
    result = dict(floors)
    for k in order:
        if units <= 0:
            break
        cls = owner[k][0]
        if class_total[cls] + q > cap[cls]:
            continue
        result[k] += q
        class_total[cls] += q
        units -= 1
    return result
