"""An independent exact-rational oracle of BEHAVIOUR §2 (scoring) and §3 steps 1-7 (allocation).

Written from docs/BEHAVIOUR.md and issue 21, not from the production code: every value is a
`fractions.Fraction` (or an integer count of minor units); Decimal appears only where inputs
are converted (`Fraction(Decimal)` is exact) and where the final results are written out
(from an integer, through a string, so no context precision is involved).

Interpretations where the spec is silent (as agreed for issue 21):

- FX: `usd_to` quotes against USD (USD is 1); rate(a→b) = usd_to[b] / usd_to[a] exactly.
- A holding without a price has no value and is not eligible.
- Step 4: only classes with at least one eligible asset (and not dropped) take part. Stage 1:
  each holds max(V_k, f·mid_k) for the one f ≤ 1 that spends the money; if all reach mid_k,
  stage 2 does the same toward hi_k from max(V_k, mid_k); what is left is `unallocated`.
- Step 5: a class whose amount is > 0 and < its minimum is below minimum; one is dropped per
  pass (smallest amount ÷ minimum, ties: first in the user's class order) and step 4 redone.
  Within a class, while some asset's share is below the minimum, the lowest-scored of those
  (ties: the later symbol) is removed and the amount re-split. A minimum of 0 or None is none.
- Step 6: floors to the minor unit q; units to hand out = floor((C − unallocated)/q) − Σ
  floors/q; picks with remainder > 0 in order remainder desc, score desc, symbol asc take one
  unit each unless their class total + q would exceed hi_k − V_k; units nobody takes stay
  unallocated; unallocated = C − Σ amounts exactly.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction

# ISO 4217 minor-unit digits of the currencies the tests use.
MINOR_DIGITS: dict[str, int] = {
    "JPY": 0,
    "KRW": 0,
    "USD": 2,
    "EUR": 2,
    "BRL": 2,
    "GBP": 2,
    "BHD": 3,
    "KWD": 3,
    "JOD": 3,
    "CLF": 4,
    "UYW": 4,
}

NO_ELIGIBLE_ASSET = "no_eligible_asset"
BELOW_MINIMUM = "below_minimum"

ZERO = Fraction(0)
ONE = Fraction(1)
HUNDRED = Fraction(100)


@dataclass(frozen=True)
class OClass:
    name: str
    target_min: Decimal
    target_max: Decimal
    max_assets: int | None = None
    min_allocation_value: Decimal | None = None


@dataclass(frozen=True)
class OHolding:
    symbol: str
    asset_class: str
    quantity: Decimal
    currency: str
    price: Decimal | None


@dataclass(frozen=True)
class ORule:
    id: str
    asset_class: str
    metric: str
    operator: str
    value: Decimal | None
    value2: Decimal | None
    points: int


@dataclass(frozen=True)
class OPortfolio:
    """One user's inputs. `fundamentals` maps a symbol to its metrics (a symbol absent from
    it has no fundamentals at all; a metric absent or None is null)."""

    base: str
    contribution: Decimal | None
    classes: tuple[OClass, ...]
    holdings: tuple[OHolding, ...]
    rules: tuple[ORule, ...]
    fundamentals: Mapping[str, Mapping[str, Decimal | None]]


@dataclass
class OResult:
    """What the oracle expects, in the shapes the tests compare."""

    amounts: dict[str, Decimal]  # symbol -> amount (> 0 only), exactly the currency's digits
    unallocated: Decimal
    status: dict[str, str | None]  # class -> None / no_eligible_asset / below_minimum
    total_value: Decimal  # T, minor unit, half-even
    current_percent: dict[str, Decimal]  # class -> 100·V_k/T, 2 dp half-even
    gap: dict[str, Decimal]  # class -> allocationGap, 2 dp half-even
    scores: dict[str, Fraction]  # symbol -> score
    # Exact intermediate values, for diagnostics.
    exact_class_amount: dict[str, Fraction] = field(default_factory=dict)
    exact_asset_amount: dict[str, Fraction] = field(default_factory=dict)
    exact_unallocated_before_rounding: Fraction = ZERO
    dropped: list[str] = field(default_factory=list)


# -- conversions (the only places a Decimal is touched) ---------------------------------------


def frac(value: Decimal | int) -> Fraction:
    return Fraction(value)


def decimal_of_units(units: int, digits: int) -> Decimal:
    """`units` × 10^-digits as a Decimal with exactly `digits` places (built from a string)."""
    return Decimal(f"{units}E-{digits}")


def round_half_even(value: Fraction, digits: int) -> Decimal:
    """`value` rounded to `digits` places, half to even, from the exact value."""
    scaled = value * 10**digits
    units = round(scaled)  # Fraction.__round__ rounds half to even, exactly
    return decimal_of_units(units, digits)


def fraction_digits(value: Decimal) -> int:
    """The number of decimal places of a finite Decimal (0 for integers written with E+n)."""
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return max(0, -exponent)


# -- §2 scoring --------------------------------------------------------------------------------


def rule_matches(rule: ORule, actual: Decimal | None) -> bool | None:
    """True/False, or None when the rule is skipped (metric null, operator not `exists`)."""
    if rule.operator == "exists":
        return actual is not None
    if actual is None:
        return None
    x = frac(actual)
    assert rule.value is not None
    v = frac(rule.value)
    if rule.operator == "gt":
        return x > v
    if rule.operator == "lt":
        return x < v
    if rule.operator == "gte":
        return x >= v
    if rule.operator == "lte":
        return x <= v
    if rule.operator == "equals":
        return x == v
    if rule.operator == "between":
        assert rule.value2 is not None
        return v <= x <= frac(rule.value2)
    raise ValueError(f"unknown operator {rule.operator!r}")


def score_of(holding: OHolding, p: OPortfolio) -> Fraction:
    metrics = p.fundamentals.get(holding.symbol, {})
    total = ZERO
    for rule in p.rules:
        if rule.asset_class != holding.asset_class:
            continue
        if rule_matches(rule, metrics.get(rule.metric)):
            total += rule.points
    return total


# -- §3 step 4: water-filling ---------------------------------------------------------------


def _fill(
    money: Fraction, level: Mapping[str, Fraction], target: Mapping[str, Fraction]
) -> tuple[dict[str, Fraction], Fraction]:
    """Each class ends at max(level_k, f·target_k) for the one f ≤ 1 that spends `money`
    (all of it when f < 1). Returns the new levels and the money left (> 0 only if f = 1)."""
    need_all = sum((max(ZERO, target[k] - level[k]) for k in level), ZERO)
    if need_all <= money:
        return {k: max(level[k], target[k]) for k in level}, money - need_all
    # f < 1. A class joins once f·target_k passes level_k, i.e. f > level_k/target_k.
    joining = sorted(
        (level[k] / target[k], k) for k in level if target[k] > 0 and level[k] < target[k]
    )
    sum_level = ZERO
    sum_target = ZERO
    f = ZERO
    for i, (_, k) in enumerate(joining):
        sum_level += level[k]
        sum_target += target[k]
        f = (money + sum_level) / sum_target
        if i + 1 == len(joining) or f <= joining[i + 1][0]:
            break
    assert f <= ONE
    new = {k: max(level[k], f * target[k]) for k in level}
    spent = sum((new[k] - level[k] for k in level), ZERO)
    assert spent == money, (spent, money)
    return new, ZERO


def water_fill(
    money: Fraction,
    value: Mapping[str, Fraction],
    mid: Mapping[str, Fraction],
    hi: Mapping[str, Fraction],
) -> tuple[dict[str, Fraction], Fraction]:
    """Amount per class and the money no class can absorb (BEHAVIOUR §3.4)."""
    level, left = _fill(money, value, mid)
    if left > 0:
        level, left = _fill(left, level, hi)
    return {k: level[k] - value[k] for k in value}, left


# -- §3 step 5: split within a class --------------------------------------------------------


def split_by_score(
    amount: Fraction,
    picks: Sequence[tuple[str, Fraction]],  # (symbol, score), score > 0
    minimum: Fraction | None,
) -> dict[str, Fraction]:
    kept = list(picks)
    while True:
        total = sum((s for _, s in kept), ZERO)
        shares = {sym: amount * s / total for sym, s in kept}
        if not minimum:
            return shares
        below = [(sym, s) for sym, s in kept if shares[sym] < minimum]
        if not below:
            return shares
        # The lowest-scored of those below; ties: the later symbol.
        victim = max(below, key=lambda x: (-x[1], x[0]))
        kept.remove(victim)
        assert kept, "the class amount is >= its minimum, so the top asset alone reaches it"


# -- the whole of §3 ---------------------------------------------------------------------------


def usd_rate(usd_to: Mapping[str, Decimal], currency: str) -> Fraction:
    return ONE if currency == "USD" else frac(usd_to[currency])


def oracle(p: OPortfolio, usd_to: Mapping[str, Decimal]) -> OResult:
    digits = MINOR_DIGITS[p.base]
    q = Fraction(1, 10**digits)
    names = [c.name for c in p.classes]
    spec = {c.name: c for c in p.classes}

    # Step 1: values.
    base_rate = usd_rate(usd_to, p.base)
    value: dict[str, Fraction] = {}
    for h in p.holdings:
        if h.price is None:
            continue
        rate = base_rate / usd_rate(usd_to, h.currency)
        value[h.symbol] = frac(h.quantity) * frac(h.price) * rate
    v_k = {n: ZERO for n in names}
    for h in p.holdings:
        if h.symbol in value:
            v_k[h.asset_class] += value[h.symbol]
    t = sum(v_k.values(), ZERO)
    c = ZERO if p.contribution is None else frac(p.contribution)
    t2 = t + c

    # Step 2: targets and gaps.
    mid = {
        n: (frac(spec[n].target_min) + frac(spec[n].target_max)) / 2 / HUNDRED * t2 for n in names
    }
    hi = {n: frac(spec[n].target_max) / HUNDRED * t2 for n in names}
    share = {n: (HUNDRED * v_k[n] / t if t else ZERO) for n in names}
    gap = {n: (frac(spec[n].target_min) + frac(spec[n].target_max)) / 2 - share[n] for n in names}

    # Step 3: scores and eligible assets.
    scores = {h.symbol: score_of(h, p) for h in p.holdings}
    eligible: dict[str, list[tuple[str, Fraction]]] = {}
    for n in names:
        picks = sorted(
            (
                (h.symbol, scores[h.symbol])
                for h in p.holdings
                if h.asset_class == n and h.price is not None and scores[h.symbol] > 0
            ),
            key=lambda x: (-x[1], x[0]),
        )
        limit = spec[n].max_assets
        eligible[n] = picks if limit is None else picks[:limit]
    status: dict[str, str | None] = {n: (None if eligible[n] else NO_ELIGIBLE_ASSET) for n in names}
    minimum: dict[str, Fraction] = {}  # classes with a minimum > 0 only
    for n in names:
        m = spec[n].min_allocation_value
        if m:
            minimum[n] = frac(m)

    # Steps 4-5: water-filling, dropping one class below its minimum per pass.
    taking = [n for n in names if eligible[n]]
    dropped: list[str] = []
    while True:
        amount, unallocated = water_fill(
            c,
            {n: v_k[n] for n in taking},
            {n: mid[n] for n in taking},
            {n: hi[n] for n in taking},
        )
        below = [n for n in taking if n in minimum and ZERO < amount[n] < minimum[n]]
        if not below:
            break
        victim = min(below, key=lambda n: (amount[n] / minimum[n], names.index(n)))
        dropped.append(victim)
        status[victim] = BELOW_MINIMUM
        taking.remove(victim)

    raw: dict[str, Fraction] = {}
    owner: dict[str, str] = {}
    for n in taking:
        if amount[n] == 0:
            continue
        for sym, x in split_by_score(amount[n], eligible[n], minimum.get(n)).items():
            raw[sym] = x
            owner[sym] = n
    assert sum(raw.values(), ZERO) + unallocated == c

    # Step 6: largest remainder in minor units, capped by hi_k − V_k and by C.
    floor_units = {sym: math.floor(x / q) for sym, x in raw.items()}
    to_give = math.floor((c - unallocated) / q) - sum(floor_units.values())
    class_units = {n: 0 for n in taking}
    for sym, u in floor_units.items():
        class_units[owner[sym]] += u
    order = sorted(
        (sym for sym, x in raw.items() if x - floor_units[sym] * q > 0),
        key=lambda sym: (-(raw[sym] - floor_units[sym] * q), -scores[sym], sym),
    )
    units = dict(floor_units)
    for sym in order:
        if to_give <= 0:
            break
        n = owner[sym]
        if (class_units[n] + 1) * q > hi[n] - v_k[n]:
            continue
        units[sym] += 1
        class_units[n] += 1
        to_give -= 1

    # Never above a band, never more than C.
    for n in taking:
        assert class_units[n] * q <= max(ZERO, hi[n] - v_k[n])
    assert sum(units.values()) * q <= c

    # Step 7: the output, and unallocated = C − Σ amounts exactly (integers at C's precision).
    amounts = {sym: decimal_of_units(u, digits) for sym, u in units.items() if u > 0}
    places = max(digits, 0 if p.contribution is None else fraction_digits(p.contribution))
    c_units = c * 10**places
    assert c_units.denominator == 1
    left_units = int(c_units) - sum(u * 10 ** (places - digits) for u in units.values())
    assert left_units >= 0
    return OResult(
        amounts=amounts,
        unallocated=decimal_of_units(left_units, places),
        status=status,
        total_value=round_half_even(t, digits),
        current_percent={n: round_half_even(share[n], 2) for n in names},
        gap={n: round_half_even(gap[n], 2) for n in names},
        scores=scores,
        exact_class_amount={n: amount.get(n, ZERO) if n in taking else ZERO for n in names},
        exact_asset_amount=raw,
        exact_unallocated_before_rounding=unallocated,
        dropped=dropped,
    )
