"""Steps 2-6 of SPEC §3 on exact values: one user's contribution split across classes and
assets, every decision taken on exact rationals.

A user's money is counted in integers: every amount is a whole number of `1/U` of the base
currency, where `U` is a common denominator of everything the allocation reads (the values
per class, which carry FX as (USD→b)/(USD→a) exactly, the contribution, the minimums, the
minor unit, and the band percentages). In those units the band targets, the water-filling
levels (one common denominator per fill), the score split, the floors, remainders, caps and
minimum comparisons are integer arithmetic, with cross-multiplication where two rationals
are compared. Nothing is rounded before the minor unit, so results equal exact rational
arithmetic on the inputs whatever their digits (a 28-digit Decimal context made a class
that could take exactly C take one unit less, and decided remainder ties by noise).

Why integers and not `fractions.Fraction`: a Fraction operation costs ≈ 1.4-1.9 µs here
(it normalises by gcd each time), a Python int operation on these sizes 40-110 ns; a user
takes a few hundred of them (`bench/core_bench.py`, docs/PERFORMANCE.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation
from fractions import Fraction
from math import lcm
from typing import NamedTuple, Protocol

NO_ELIGIBLE_ASSET = "no_eligible_asset"
BELOW_MINIMUM = "below_minimum"

# Decimal arithmetic that never rounds (products and sums of the inputs' digits); any
# operation that would is an error, not a silent rounding.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, Inexact])


class ValuePart(NamedTuple):
    """`amount` of one currency, worth amount × num / den in the base currency."""

    amount: Decimal
    num: int
    den: int


class Symbol(Protocol):
    @property
    def symbol(self) -> str: ...


class ClassInput(NamedTuple):
    """One class of the user as the allocation reads it.

    `parts`: the class's priced holdings summed per currency (their value is exact);
    `picks`: its eligible assets (ordered by score desc then symbol, already cut to
    `max_assets`); `weights`: their scores as integers in one scale shared by all classes."""

    target_min: Decimal
    target_max: Decimal
    minimum: Decimal | None
    parts: Sequence[ValuePart]
    weights: Sequence[int]
    picks: Sequence[Symbol]


class Allocation(NamedTuple):
    """Per class: the minor units of each eligible asset (0 where it gets nothing), its
    status, its value (rounded to the minor unit), current percent and gap (2 dp); and the
    portfolio total (minor unit) and the units handed out. Roundings are half-even from
    the exact value."""

    units: list[list[int]]
    status: list[str | None]
    values: list[Decimal]
    percents: list[Decimal]
    gaps: list[Decimal]
    total: Decimal
    allocated_units: int


def allocate_exact(
    contribution: Decimal,
    digits: int,
    classes: Sequence[ClassInput],
    extra: Sequence[ValuePart] = (),
) -> Allocation:
    """Steps 2 and 4-6 for one user (`digits`: the base currency's minor unit; `extra`:
    priced holdings of classes the user does not have, counted in the total only)."""
    n = len(classes)
    # Common denominators: L for money (values, C, minimums, the minor unit), P for percents.
    unit = 10**digits
    c_num, c_den = contribution.as_integer_ratio()
    money_den = lcm(unit, c_den)
    pct_den = 1
    parts: list[list[tuple[int, int]]] = []  # per class: value = Σ numerator / den
    bands: list[tuple[int, int, int, int]] = []
    minimums: list[tuple[int, int] | None] = []
    for c in classes:
        row = []
        for amount, r_num, r_den in c.parts:
            a_num, a_den = amount.as_integer_ratio()
            den = a_den * r_den
            row.append((a_num * r_num, den))
            money_den = lcm(money_den, den)
        parts.append(row)
        m = c.minimum
        if m:
            ratio = m.as_integer_ratio()
            money_den = lcm(money_den, ratio[1])
            minimums.append(ratio)
        else:
            minimums.append(None)
        lo_n, lo_d = c.target_min.as_integer_ratio()
        hi_n, hi_d = c.target_max.as_integer_ratio()
        bands.append((lo_n, lo_d, hi_n, hi_d))
        pct_den = lcm(pct_den, lo_d, hi_d)
    extra_parts = []
    for amount, r_num, r_den in extra:
        a_num, a_den = amount.as_integer_ratio()
        extra_parts.append((a_num * r_num, a_den * r_den))
        money_den = lcm(money_den, a_den * r_den)
    big_l = money_den
    value_l = [sum(num * (big_l // den) for num, den in row) for row in parts]
    total_l = sum(value_l) + sum(num * (big_l // den) for num, den in extra_parts)
    c_l = c_num * (big_l // c_den)

    # U = L × 200P: mid = (min + max) / 200 × T' and hi = max / 100 × T' are integers.
    scale = 200 * pct_den
    after = total_l + c_l
    mid_p = [
        lo_n * (pct_den // lo_d) + hi_n * (pct_den // hi_d) for lo_n, lo_d, hi_n, hi_d in bands
    ]
    hi_u = [2 * hi_n * (pct_den // hi_d) * after for _, _, hi_n, hi_d in bands]
    value_u = [v * scale for v in value_l]
    min_u = [0 if m is None else m[0] * (big_l // m[1]) * scale for m in minimums]
    q_u = (big_l // unit) * scale
    money = c_l * scale

    # Steps 4-5: water-fill the classes with an eligible asset; drop one class below its
    # minimum per pass (the furthest below relatively), and fill again without it.
    status: list[str | None] = [None if c.weights else NO_ELIGIBLE_ASSET for c in classes]
    active = [k for k in range(n) if status[k] is None]
    while True:
        nums, den, rest = water_fill_units(
            money,
            [value_u[k] for k in active],
            [mid_p[k] * after for k in active],
            [hi_u[k] for k in active],
        )
        amount_of = dict(zip(active, nums, strict=True))
        short = [k for k in active if min_u[k] and 0 < amount_of[k] < min_u[k] * den]
        if not short:
            break
        # amount ÷ minimum smallest first; the common `den` cancels; ties: class order.
        dropped = min(short, key=lambda k: (Fraction(amount_of[k], min_u[k]), k))
        status[dropped] = BELOW_MINIMUM
        active.remove(dropped)

    # Step 5: split each class by score; step 6: floors, then units by largest remainder.
    units: list[list[int]] = [[0] * len(c.weights) for c in classes]
    floors_of: dict[int, int] = {}
    remainders: list[tuple[int, int, int]] = []  # (class, pick, remainder over den·W·q)
    weight_of: dict[int, int] = {}
    for k in active:
        a = amount_of[k]
        if a <= 0:
            continue
        weights = classes[k].weights
        alive = _split(a, den, classes[k], min_u[k]) if min_u[k] else range(len(weights))
        w_sum = sum(weights[i] for i in alive)
        weight_of[k] = w_sum
        unit_den = den * w_sum * q_u
        got = units[k]
        for i in alive:
            f, r = divmod(a * weights[i], unit_den)
            got[i] = f
            if r:
                remainders.append((k, i, r))
        floors_of[k] = sum(got)
    handed = sum(floors_of.values())
    # The units of the exact allocated total (C − rest) rounded down: never more than C.
    spare = (money - rest) // q_u - handed
    if spare > 0 and remainders:
        # r/(den·W_k·q) compared across classes as r·(M/W_k), M = lcm of the W_k; ties:
        # higher score (the weights share one scale), then symbol.
        common = lcm(*weight_of.values())
        factor = {k: common // w for k, w in weight_of.items()}
        order = sorted(
            remainders,
            key=lambda e: (
                -e[2] * factor[e[0]],
                -classes[e[0]].weights[e[1]],
                classes[e[0]].picks[e[1]].symbol,
            ),
        )
        for k, i, _ in order:
            # A unit that would take the class above hi_k − V_k goes to the next remainder.
            if (floors_of[k] + 1) * q_u > hi_u[k] - value_u[k]:
                continue
            units[k][i] += 1
            floors_of[k] += 1
            handed += 1
            spare -= 1
            if not spare:
                break

    # Reported values: exact, rounded once.
    if total_l > 0:
        percents = [rounded(100 * v, total_l, 2) for v in value_l]
        gaps = [
            rounded(m * total_l - 200 * pct_den * v, 2 * pct_den * total_l, 2)
            for m, v in zip(mid_p, value_l, strict=True)
        ]
    else:
        percents = [_ZERO_PERCENT] * n
        gaps = [rounded(m, 2 * pct_den, 2) for m in mid_p]
    return Allocation(
        units=units,
        status=status,
        values=[rounded(v, big_l, digits) for v in value_l],
        percents=percents,
        gaps=gaps,
        total=rounded(total_l, big_l, digits),
        allocated_units=handed,
    )


def _split(amount: int, den: int, c: ClassInput, minimum: int) -> list[int]:
    """The picks (indexes) left after the minimum rule of step 5: while some pick's share
    amount·w/(den·W) is below the minimum, drop the lowest-scored such pick (ties: the
    later symbol, then the first in order) and split again."""
    alive = list(range(len(c.weights)))
    weights = c.weights
    while len(alive) > 1:
        bar = minimum * den * sum(weights[i] for i in alive)
        low = [i for i in alive if amount * weights[i] < bar]
        if not low:
            break
        worst = low[0]
        for i in low[1:]:
            if weights[i] < weights[worst] or (
                weights[i] == weights[worst] and c.picks[i].symbol > c.picks[worst].symbol
            ):
                worst = i
        alive.remove(worst)
    return alive


def water_fill_units(
    money: int, value: Sequence[int], mid: Sequence[int], hi: Sequence[int]
) -> tuple[list[int], int, int]:
    """Step 4 on integers: each class raised toward `mid` with one common fill level, then
    toward `hi` the same way, never above `hi`. Returns the amounts as numerators over one
    common denominator, that denominator, and the money no class could absorb."""
    n = len(value)
    if money <= 0 or n == 0:
        return [0] * n, 1, max(money, 0)
    need = [m - v if m > v else 0 for m, v in zip(mid, value, strict=True)]
    needed = sum(need)
    if needed > money:
        nums, den = _level(money, value, mid)
        return nums, den, 0
    rest = money - needed
    if rest == 0:
        return need, 1, 0
    lifted = [v + a for v, a in zip(value, need, strict=True)]
    need2 = [h - v if h > v else 0 for h, v in zip(hi, lifted, strict=True)]
    needed2 = sum(need2)
    if needed2 <= rest:
        return [a + b for a, b in zip(need, need2, strict=True)], 1, rest - needed2
    nums, den = _level(rest, lifted, hi)
    return [a * den + b for a, b in zip(need, nums, strict=True)], den, 0


def _level(money: int, value: Sequence[int], target: Sequence[int]) -> tuple[list[int], int]:
    """Amounts max(0, f·t_k − v_k) for the one f < 1 that spends `money` (which is less
    than the classes need to reach their targets), as numerators over f's denominator.

    Start from every class with a target and f = (money + Σv)/Σt; a class whose breakpoint
    v_k/t_k is at or above f would receive nothing at the true level (which is at most f),
    so leave it out and compute f again, until no class leaves: then f spends exactly
    `money` (compared by cross-multiplication, no sort)."""
    live = [k for k in range(len(value)) if target[k] > 0]
    while True:
        t_sum = sum(target[k] for k in live)
        num = money + sum(value[k] for k in live)  # f = num / t_sum
        keep = [k for k in live if value[k] * t_sum < num * target[k]]
        if len(keep) == len(live):
            break
        live = keep
    nums = [max(0, num * t - v * t_sum) for t, v in zip(target, value, strict=True)]
    return nums, t_sum


def water_fill(
    money: Decimal | Fraction | int,
    value: Mapping[str, Decimal | Fraction | int],
    mid: Mapping[str, Decimal | Fraction | int],
    hi: Mapping[str, Decimal | Fraction | int],
) -> tuple[dict[str, Fraction], Fraction]:
    """`water_fill_units` on any exact numbers: the amount per class and the money left."""
    keys = list(value)
    every = [Fraction(money)] + [Fraction(m[k]) for m in (value, mid, hi) for k in keys]
    den = lcm(*(f.denominator for f in every))
    ints = [int(f * den) for f in every]
    n = len(keys)
    nums, d, rest = water_fill_units(
        ints[0], ints[1 : 1 + n], ints[1 + n : 1 + 2 * n], ints[1 + 2 * n :]
    )
    amounts = {k: Fraction(a, d * den) for k, a in zip(keys, nums, strict=True)}
    return amounts, Fraction(rest, den)


def rounded(num: int, den: int, places: int) -> Decimal:
    """num/den (den > 0) rounded half-even to `places` decimals."""
    q, r = divmod(num * 10**places, den)
    twice = 2 * r
    if twice > den or (twice == den and q & 1):
        q += 1
    return Decimal(q).scaleb(-places, EXACT)


_ZERO_PERCENT = Decimal("0.00")


def score_weights(scores: Sequence[Decimal]) -> list[int]:
    """Scores as integers in one common scale (their ratios unchanged)."""
    ratios = [s.as_integer_ratio() for s in scores]
    den = lcm(*(d for _, d in ratios)) if ratios else 1
    return [n * (den // d) for n, d in ratios]
