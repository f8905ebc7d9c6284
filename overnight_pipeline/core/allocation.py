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
from operator import itemgetter
from typing import NamedTuple, cast

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
    picks' scores as integers in one scale, and symbols).

    It runs once per user of every night, so its steps are sections with plain loops (and
    three helpers for the last ones): no per-user dataclass or dicts passed between
    helpers, and no comprehension or lambda reading its locals (that makes them closure
    cells, slower to read everywhere in the function). As seven helpers it took ≈ 60 µs a
    user, ≈ 45 µs so (process time on the 9,717 users of bench/batch_cpu_bench.py's
    database)."""
    value_num, value_den, min_num, min_den = cl.value_num, cl.value_den, cl.min_num, cl.min_den
    lo_num, lo_den, hi_num, hi_den = cl.lo_num, cl.lo_den, cl.hi_num, cl.hi_den
    pick_start, pick_end = cl.pick_start, cl.pick_end
    n = last - first

    # Step 2 on integers (docs/ALGORITHM.md §6): money over the common denominator L
    # (values, C, minimums, the minor unit), band percentages over P, and everything the
    # allocation compares in units of 1/U of the base currency, U = L × 200P, where the
    # targets mid = (min + max) / 200 × T' and hi = max / 100 × T' are integers.
    unit = 10**digits
    c_num, c_den = contribution.as_integer_ratio()
    big_l = lcm(unit, c_den, extra[1], *value_den[first:last], *min_den[first:last])
    pct_den = lcm(*lo_den[first:last], *hi_den[first:last])
    scale = 200 * pct_den
    value_l: list[int] = []  # over L
    mid_p: list[int] = []  # min + max over P; mid_u = mid_p × T' over L
    hi_p: list[int] = []  # max over P
    min_u: list[int] = []
    status: list[str | None] = []
    for k in range(first, last):
        value_l.append(value_num[k] * (big_l // value_den[k]))
        h = hi_num[k] * (pct_den // hi_den[k])
        hi_p.append(h)
        mid_p.append(lo_num[k] * (pct_den // lo_den[k]) + h)
        min_u.append(min_num[k] * (big_l // min_den[k]) * scale)
        status.append(None if pick_end[k] > pick_start[k] else NO_ELIGIBLE_ASSET)
    total_l = sum(value_l) + extra[0] * (big_l // extra[1])
    c_l = c_num * (big_l // c_den)
    after = total_l + c_l  # T' over L
    q_u = (big_l // unit) * scale  # one minor unit
    money = c_l * scale

    # Steps 4-5 across classes: water-fill the classes with an eligible asset; drop one
    # class below its minimum per pass (the furthest below relatively), and fill again
    # without it. The amounts are numerators over one denominator `den`.
    active = [i for i, st in enumerate(status) if st is None]
    while True:
        value_a, mid_a, hi_a = [], [], []
        for i in active:
            value_a.append(value_l[i] * scale)
            mid_a.append(mid_p[i] * after)
            hi_a.append(2 * hi_p[i] * after)
        amounts, den, rest = water_fill_units(money, value_a, mid_a, hi_a)
        # amount ÷ minimum smallest first (cross-multiplied: the common `den` cancels);
        # ties: class order.
        dropped, low = -1, 0
        for i, a in zip(active, amounts, strict=True):
            m = min_u[i]
            if m and 0 < a < m * den and (dropped < 0 or a * min_u[dropped] < low * m):
                dropped, low = i, a
        if dropped < 0:
            break
        status[dropped] = BELOW_MINIMUM
        active.remove(dropped)

    # Step 5 within each class: its amount split by score after the minimum rule; step 6:
    # each pick's floor in minor units, then the units left by largest remainder.
    units, remainders, floors_of, w_sum_of = _floors(
        cl, first, active, amounts, den, min_u, weight, symbol, den_q=q_u, n=n
    )
    handed = sum(floors_of)
    spare = (money - rest) // q_u - handed
    if spare > 0 and remainders:
        room = [2 * h * after - v * scale for h, v in zip(hi_p, value_l, strict=True)]
        handed += _spare_units(
            spare, remainders, units, floors_of, w_sum_of, weight, symbol, room, q_u
        )
    values, percents, gaps = _class_figures(value_l, mid_p, total_l, big_l, pct_den, digits)
    return Allocation(
        cast(list[tuple[int, int, int]], list(map(tuple, filter(_UNITS_GIVEN, units)))),
        status,
        values,
        percents,
        gaps,
        rounded(total_l, big_l, digits),
        handed,
    )


def _floors(
    cl: ClassTable,
    first: int,
    active: list[int],
    amounts: list[int],
    den: int,
    min_u: list[int],
    weight: Sequence[int],
    symbol: Sequence[str],
    *,
    den_q: int,
    n: int,
) -> tuple[list[list[int]], list[tuple[int, int, int, int]], list[int], dict[int, int]]:
    """Step 5 within each class of `allocate_exact` and step 6's floors: each active class's
    amount (`amounts[i] / den`) split by score after the minimum rule, each pick's floor in
    minor units (`den_q`: one minor unit in the allocation's units) and its remainder over
    den·W·q (W: the class's weight sum). Returns the [class row, pick, minor units] entries,
    the (class, pick, remainder, entry) remainders, each class's floors and weight sum."""
    pick_start, pick_end = cl.pick_start, cl.pick_end
    units: list[list[int]] = []
    remainders: list[tuple[int, int, int, int]] = []
    floors_of = [0] * n
    w_sum_of: dict[int, int] = {}
    for i, a in zip(active, amounts, strict=True):
        if a <= 0:
            continue
        row = first + i
        start, end = pick_start[row], pick_end[row]
        m = min_u[i]
        picks: Sequence[int] = (
            _split(a, den, m, weight, symbol, start, end) if m else range(start, end)
        )
        w_sum = 0
        for j in picks:
            w_sum += weight[j]
        w_sum_of[i] = w_sum
        unit_den = den * w_sum * den_q
        floors = 0
        for j in picks:
            f, r = divmod(a * weight[j], unit_den)
            if r:
                remainders.append((i, j, r, len(units)))
            units.append([row, j, f])
            floors += f
        floors_of[i] = floors
    return units, remainders, floors_of, w_sum_of


def _spare_units(
    spare: int,
    remainders: list[tuple[int, int, int, int]],
    units: list[list[int]],
    floors_of: list[int],
    w_sum_of: dict[int, int],
    weight: Sequence[int],
    symbol: Sequence[str],
    room: list[int],
    q_u: int,
) -> int:
    """Step 6: the `spare` units left after the floors, one per pick by largest remainder,
    never taking a class above hi_k − V_k (`room`, in the allocation's units); as many as
    the exact allocated total rounded down holds, so never more than C. Adds them to
    `units` and `floors_of`; returns how many were handed out."""
    # r/(den·W_k·q) compared across classes as r·(M/W_k), M = lcm of the W_k; ties: higher
    # score (the weights share one scale), then symbol, then pick order.
    common = lcm(*w_sum_of.values())
    ranked = []
    for i, j, r, entry in remainders:
        ranked.append((-r * (common // w_sum_of[i]), -weight[j], symbol[j], entry, i))
    ranked.sort()
    handed = 0
    for _, _, _, entry, i in ranked:
        if (floors_of[i] + 1) * q_u > room[i]:  # above hi_k − V_k: the next remainder
            continue
        units[entry][2] += 1
        floors_of[i] += 1
        handed += 1
        if handed == spare:
            break
    return handed


def _class_figures(
    value_l: list[int],
    mid_p: list[int],
    total_l: int,
    big_l: int,
    pct_den: int,
    digits: int,
) -> tuple[list[Decimal], list[Decimal], list[Decimal]]:
    """Each class's value, current percent and allocation gap of `allocate_exact`: exact,
    rounded once."""
    values, percents, gaps = [], [], []
    scale = 200 * pct_den
    if total_l > 0:
        # `rounded` and `_cents` written out: three calls a class cost ≈ 1.5 µs a user.
        gap_den = 2 * pct_den * total_l
        unit = 10**digits
        exponent = _EXPONENTS[digits] if 0 <= digits < 8 else -digits
        cents = _CENTS
        for v, m in zip(value_l, mid_p, strict=True):
            q, r = divmod(v * unit, big_l)
            twice = 2 * r
            if twice > big_l or (twice == big_l and q & 1):
                q += 1
            values.append(Decimal(q).scaleb(exponent, EXACT))
            q, r = divmod(10_000 * v, total_l)
            twice = 2 * r
            if twice > total_l or (twice == total_l and q & 1):
                q += 1
            percents.append(cents.get(q) or _cents(100 * v, total_l))
            q, r = divmod((m * total_l - scale * v) * 100, gap_den)
            twice = 2 * r
            if twice > gap_den or (twice == gap_den and q & 1):
                q += 1
            gaps.append(cents.get(q) or _cents(m * total_l - scale * v, gap_den))
    else:
        for v, m in zip(value_l, mid_p, strict=True):
            values.append(rounded(v, big_l, digits))
            percents.append(_ZERO_PERCENT)
            gaps.append(_cents(m, 2 * pct_den))
    return values, percents, gaps


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
            CENTS_TEXTS[id(found)] = format(found, "f")
    return found


_CACHED_CENTS = 20_000
_CENTS: dict[int, Decimal] = {}
# The text of each shared percentage (by the object's id: they live as long as the process,
# so no other object has it), for the cache documents: its `str()` and its `format(, "f")`,
# rounded to 2 places or not (`core.cache_documents`).
CENTS_TEXTS: dict[int, str] = {}


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
        w_sum = 0
        for j in alive:
            w_sum += weight[j]
        bar = minimum * den * w_sum
        worst = -1
        for j in alive:
            if amount * weight[j] < bar and (
                worst < 0
                or weight[j] < weight[worst]
                or (weight[j] == weight[worst] and symbol[j] > symbol[worst])
            ):
                worst = j
        if worst < 0:
            break
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
    for k, a in enumerate(need):
        nums[k] += a * den
    return nums, den, 0


def _level(money: int, value: Sequence[int], target: Sequence[int]) -> tuple[list[int], int]:
    """Amounts max(0, f·t_k − v_k) for the one f < 1 that spends `money` (which is less
    than the classes need to reach their targets), as numerators over f's denominator.

    Start from every class with a target and f = (money + Σv)/Σt; a class whose breakpoint
    v_k/t_k is at or above f would receive nothing at the true level (which is at most f),
    so leave it out and compute f again, until no class leaves: then f spends exactly
    `money` (compared by cross-multiplication, no sort)."""
    live = [k for k, t in enumerate(target) if t > 0]
    while True:
        t_sum, num = 0, money  # f = num / t_sum
        for k in live:
            t_sum += target[k]
            num += value[k]
        keep = []
        for k in live:
            if value[k] * t_sum < num * target[k]:
                keep.append(k)
        if len(keep) == len(live):
            break
        live = keep
    nums = []
    for t, v in zip(target, value, strict=True):
        a = num * t - v * t_sum
        nums.append(a if a > 0 else 0)
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
_UNITS_GIVEN = itemgetter(2)  # the entries with units: [(k, j, u) … if u], by C-level maps
CENTS_TEXTS[id(_ZERO_PERCENT)] = "0.00"
_ZERO = Decimal(0)


def score_weights(scores: Sequence[Decimal]) -> list[int]:
    """Scores as integers in one common scale (their ratios unchanged)."""
    ratios = [s.as_integer_ratio() for s in scores]
    den = lcm(*(d for _, d in ratios)) if ratios else 1
    return [n * (den // d) for n, d in ratios]
