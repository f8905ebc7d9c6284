"""Steps 2-6 of BEHAVIOUR §3 on exact values: one user's contribution split across classes and
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
takes a few hundred of them (`bench/core_bench.py`; docs/PERFORMANCE.md, "Exact
allocation").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal, Inexact, InvalidOperation
from fractions import Fraction
from math import lcm
from typing import NamedTuple

NO_ELIGIBLE_ASSET = "no_eligible_asset"
BELOW_MINIMUM = "below_minimum"

# Decimal arithmetic that never rounds (products and sums of the inputs' digits); any
# operation that would is an error, not a silent rounding.
EXACT = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN, traps=[InvalidOperation, Inexact])


@dataclass(slots=True)
class ClassTable:
    """Class rows, as the allocation reads them: exact integer ratios, one list entry per
    row (a user's rows contiguous, in the user's class order). A row's value is the exact
    base-currency value of its priced holdings (`value_num / value_den`); a minimum of 0
    is no minimum; its eligible assets are picks `pick_start` to `pick_end` (ordered by
    score desc then symbol, already cut to `max_assets`)."""

    lo_num: list[int] = field(default_factory=list)
    lo_den: list[int] = field(default_factory=list)
    hi_num: list[int] = field(default_factory=list)
    hi_den: list[int] = field(default_factory=list)
    min_num: list[int] = field(default_factory=list)
    min_den: list[int] = field(default_factory=list)
    value_num: list[int] = field(default_factory=list)
    value_den: list[int] = field(default_factory=list)
    pick_start: list[int] = field(default_factory=list)
    pick_end: list[int] = field(default_factory=list)

    def add(
        self,
        target_min: Decimal,
        target_max: Decimal,
        minimum: Decimal | None,
        value: tuple[int, int],
        picks: tuple[int, int],
    ) -> None:
        """Append one row (the one-user path; the batch fills the lists itself)."""
        for num_list, den_list, d in (
            (self.lo_num, self.lo_den, target_min),
            (self.hi_num, self.hi_den, target_max),
            (self.min_num, self.min_den, minimum or _ZERO),
        ):
            n, q = d.as_integer_ratio()
            num_list.append(n)
            den_list.append(q)
        self.value_num.append(value[0])
        self.value_den.append(value[1])
        self.pick_start.append(picks[0])
        self.pick_end.append(picks[1])


class Allocation(NamedTuple):
    """One user's allocation. `units`: (class row, pick, minor units) for each pick that
    receives money, in class then pick order; per class of the user (in order): its
    status, value (rounded to the minor unit), current percent and gap (2 dp); the
    portfolio total (minor unit) and the units handed out. Roundings are half-even from
    the exact values."""

    units: list[tuple[int, int, int]]
    status: list[str | None]
    values: list[Decimal]
    percents: list[Decimal]
    gaps: list[Decimal]
    total: Decimal
    allocated_units: int


def add_ratio(acc: tuple[int, int], amount: Decimal, num: int, den: int) -> tuple[int, int]:
    """acc + amount × num / den, as a (numerator, denominator) pair (not reduced)."""
    a_num, a_den = amount.as_integer_ratio()
    a_num, a_den = a_num * num, a_den * den
    if acc[0] == 0:
        return a_num, a_den
    if acc[1] == a_den:
        return acc[0] + a_num, a_den
    return acc[0] * a_den + a_num * acc[1], acc[1] * a_den


def allocate_exact(
    contribution: Decimal,
    digits: int,
    extra: tuple[int, int],
    cl: ClassTable,
    first: int,
    last: int,
    weight: Sequence[int],
    symbol: Sequence[str],
) -> Allocation:
    """Steps 2 and 4-6 for the user whose class rows are `first` to `last` of `cl`
    (`digits`: the base currency's minor unit; `extra`: the value of priced holdings in
    classes the user does not have, counted in the total only; `weight`, `symbol`: the
    picks' scores as integers in one scale, and symbols)."""
    user = _in_units(contribution, digits, extra, cl, first, last)
    status, active, amount_of, den, rest = _fill_and_drop(user, cl, first, last)
    units, class_of, floors_of, remainders, weight_of = _score_split(
        user, active, amount_of, den, cl, first, weight, symbol
    )
    handed = _largest_remainder(user, rest, units, floors_of, remainders, weight_of, weight, symbol)
    percents, gaps = _percents_and_gaps(user)
    big_l = user.big_l
    return Allocation._make(
        (
            [(first + class_of[j], j, u) for j, u in units.items() if u],
            status,
            [rounded(v, big_l, digits) for v in user.value_l],
            percents,
            gaps,
            rounded(user.total_l, big_l, digits),
            handed,
        ),
    )


@dataclass(slots=True)
class _UserUnits:
    """One user's numbers as integers (docs/ALGORITHM.md §6): money over the common
    denominator L (`*_l`), band percentages over P, and everything the allocation compares
    in units of 1/U of the base currency, U = L × 200P (`*_u`), where the targets of step 2,
    mid = (min + max) / 200 × T' and hi = max / 100 × T', are integers."""

    n: int  # the user's classes
    big_l: int
    pct_den: int
    value_l: list[int]
    total_l: int
    after: int  # T' over L
    mid_p: list[int]  # min + max over P; mid_u = mid_p × after
    hi_u: list[int]
    value_u: list[int]
    min_u: list[int]
    q_u: int  # one minor unit
    money: int


def _in_units(
    contribution: Decimal,
    digits: int,
    extra: tuple[int, int],
    cl: ClassTable,
    first: int,
    last: int,
) -> _UserUnits:
    """Step 2 on integers: the common denominators, the values and the band targets."""
    ks = range(first, last)
    # Common denominators: L for money (values, C, minimums, the minor unit), P for percents.
    unit = 10**digits
    c_num, c_den = contribution.as_integer_ratio()
    big_l = lcm(unit, c_den, extra[1], *cl.value_den[first:last], *cl.min_den[first:last])
    pct_den = lcm(*cl.lo_den[first:last], *cl.hi_den[first:last])
    value_l = [cl.value_num[k] * (big_l // cl.value_den[k]) for k in ks]
    total_l = sum(value_l) + extra[0] * (big_l // extra[1])
    c_l = c_num * (big_l // c_den)

    # U = L × 200P: mid = (min + max) / 200 × T' and hi = max / 100 × T' are integers.
    scale = 200 * pct_den
    after = total_l + c_l
    mid_p = [
        cl.lo_num[k] * (pct_den // cl.lo_den[k]) + cl.hi_num[k] * (pct_den // cl.hi_den[k])
        for k in ks
    ]
    hi_u = [2 * cl.hi_num[k] * (pct_den // cl.hi_den[k]) * after for k in ks]
    value_u = [v * scale for v in value_l]
    min_u = [cl.min_num[k] * (big_l // cl.min_den[k]) * scale for k in ks]
    q_u = (big_l // unit) * scale
    money = c_l * scale
    return _UserUnits(
        last - first,
        big_l,
        pct_den,
        value_l,
        total_l,
        after,
        mid_p,
        hi_u,
        value_u,
        min_u,
        q_u,
        money,
    )


# Steps 4-5 across classes: each class's status, the classes still in, their amounts as
# numerators over one denominator, that denominator, and the money no class could take.
_Fill = tuple[list[str | None], list[int], dict[int, int], int, int]
# Step 5 within each class and the floors of step 6: units per pick, each pick's class
# (index in the user), the units per class, the remainders (class, pick, remainder over
# den·W·q) and each class's weight sum. Plain tuples: these are built once per user.
_Shares = tuple[
    dict[int, int], dict[int, int], list[int], list[tuple[int, int, int]], dict[int, int]
]


def _fill_and_drop(user: _UserUnits, cl: ClassTable, first: int, last: int) -> _Fill:
    """Steps 4-5: water-fill the classes with an eligible asset; drop one class below its
    minimum per pass (the furthest below relatively), and fill again without it."""
    status: list[str | None] = [
        None if cl.pick_end[k] > cl.pick_start[k] else NO_ELIGIBLE_ASSET for k in range(first, last)
    ]
    active = [i for i in range(user.n) if status[i] is None]
    value_u, mid_p, after, hi_u, min_u = user.value_u, user.mid_p, user.after, user.hi_u, user.min_u
    while True:
        nums, den, rest = water_fill_units(
            user.money,
            [value_u[i] for i in active],
            [mid_p[i] * after for i in active],
            [hi_u[i] for i in active],
        )
        amount_of = dict(zip(active, nums, strict=True))
        short = [i for i in active if min_u[i] and 0 < amount_of[i] < min_u[i] * den]
        if not short:
            return status, active, amount_of, den, rest
        # amount ÷ minimum smallest first; the common `den` cancels; ties: class order.
        dropped = min(short, key=lambda i: (Fraction(amount_of[i], min_u[i]), i))
        status[dropped] = BELOW_MINIMUM
        active.remove(dropped)


def _score_split(
    user: _UserUnits,
    active: list[int],
    amount_of: dict[int, int],
    den: int,
    cl: ClassTable,
    first: int,
    weight: Sequence[int],
    symbol: Sequence[str],
) -> _Shares:
    """Step 5: split each class's amount (`amount_of[i]` over `den`) by score, after the
    minimum rule; step 6: the floors."""
    units: dict[int, int] = {}
    class_of: dict[int, int] = {}
    floors_of = [0] * user.n
    remainders: list[tuple[int, int, int]] = []
    weight_of: dict[int, int] = {}
    q_u = user.q_u
    for i in active:
        a = amount_of[i]
        if a <= 0:
            continue
        start, end = cl.pick_start[first + i], cl.pick_end[first + i]
        min_u = user.min_u[i]
        alive = _split(a, den, min_u, weight, symbol, start, end) if min_u else None
        picks = range(start, end) if alive is None else alive
        w_sum = sum(weight[j] for j in picks)
        weight_of[i] = w_sum
        unit_den = den * w_sum * q_u
        floors = 0
        for j in picks:
            f, r = divmod(a * weight[j], unit_den)
            units[j] = f
            class_of[j] = i
            floors += f
            if r:
                remainders.append((i, j, r))
        floors_of[i] = floors
    return units, class_of, floors_of, remainders, weight_of


def _largest_remainder(
    user: _UserUnits,
    rest: int,
    units: dict[int, int],
    floors_of: list[int],
    remainders: list[tuple[int, int, int]],
    weight_of: dict[int, int],
    weight: Sequence[int],
    symbol: Sequence[str],
) -> int:
    """Step 6: the units left after the floors, one per pick by largest remainder, never
    taking a class above hi_k − V_k (into `units` and `floors_of`); returns the units
    handed out in all."""
    q_u, hi_u, value_u = user.q_u, user.hi_u, user.value_u
    handed = sum(floors_of)
    # The units of the exact allocated total (C − rest) rounded down: never more than C.
    spare = (user.money - rest) // q_u - handed
    if spare > 0 and remainders:
        # r/(den·W_k·q) compared across classes as r·(M/W_k), M = lcm of the W_k; ties:
        # higher score (the weights share one scale), then symbol.
        common = lcm(*weight_of.values())
        factor = {i: common // w for i, w in weight_of.items()}
        remainders.sort(key=lambda e: (-e[2] * factor[e[0]], -weight[e[1]], symbol[e[1]]))
        for i, j, _ in remainders:
            # A unit that would take the class above hi_k − V_k goes to the next remainder.
            if (floors_of[i] + 1) * q_u > hi_u[i] - value_u[i]:
                continue
            units[j] += 1
            floors_of[i] += 1
            handed += 1
            spare -= 1
            if not spare:
                break
    return handed


def _percents_and_gaps(user: _UserUnits) -> tuple[list[Decimal], list[Decimal]]:
    """Each class's current percent and allocation gap: exact, rounded once."""
    total_l, pct_den = user.total_l, user.pct_den
    if total_l > 0:
        percents = [_cents(100 * v, total_l) for v in user.value_l]
        den, scale = 2 * pct_den * total_l, 200 * pct_den
        gaps = [
            _cents(m * total_l - scale * v, den)
            for m, v in zip(user.mid_p, user.value_l, strict=True)
        ]
    else:
        percents = [_ZERO_PERCENT] * user.n
        gaps = [_cents(m, 2 * pct_den) for m in user.mid_p]
    return percents, gaps


def _cents(num: int, den: int) -> Decimal:
    """`rounded(num, den, 2)`: a percentage. Those within ±200.00 (every current share and
    every gap) are made once per value and shared, a Decimal being immutable."""
    q, r = divmod(num * 100, den)
    twice = 2 * r
    if twice > den or (twice == den and q & 1):
        q += 1
    found = _CENTS.get(q)
    if found is None:
        found = Decimal(q).scaleb(_EXPONENTS[2], EXACT)
        if -_CACHED_CENTS <= q <= _CACHED_CENTS:
            _CENTS[q] = found
    return found


_CACHED_CENTS = 20_000
_CENTS: dict[int, Decimal] = {}


def _split(
    amount: int,
    den: int,
    minimum: int,
    weight: Sequence[int],
    symbol: Sequence[str],
    start: int,
    end: int,
) -> list[int]:
    """The picks left after the minimum rule of step 5: while some pick's share
    amount·w/(den·W) is below the minimum, drop the lowest-scored such pick (ties: the
    later symbol, then the first in order) and split again."""
    alive = list(range(start, end))
    while len(alive) > 1:
        bar = minimum * den * sum(weight[j] for j in alive)
        low = [j for j in alive if amount * weight[j] < bar]
        if not low:
            break
        worst = low[0]
        for j in low[1:]:
            if weight[j] < weight[worst] or (
                weight[j] == weight[worst] and symbol[j] > symbol[worst]
            ):
                worst = j
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
    return Decimal(q).scaleb(_EXPONENTS[places] if 0 <= places < 8 else -places, EXACT)


# scaleb's exponents, made once (an int is made a Decimal on each call).
_EXPONENTS = [Decimal(-p) for p in range(8)]
_ZERO_PERCENT = Decimal("0.00")
_ZERO = Decimal(0)


def score_weights(scores: Sequence[Decimal]) -> list[int]:
    """Scores as integers in one common scale (their ratios unchanged)."""
    ratios = [s.as_integer_ratio() for s in scores]
    den = lcm(*(d for _, d in ratios)) if ratios else 1
    return [n * (den // d) for n, d in ratios]
