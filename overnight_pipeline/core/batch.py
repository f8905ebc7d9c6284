"""Scoring and recommendations for a whole batch of users at once.

The row-heavy work (every holding against every rule of its class, valuation, eligibility
and ordering) is vectorised with numpy/pandas. Rule comparisons run on floats and fall back
to Decimal wherever the floats are equal, which keeps them exact: float(Decimal) is
monotonic, so unequal floats order their Decimals the same way.

Money is Decimal throughout. The allocation of SPEC §3 runs for all users at once on numpy
object arrays of Decimal (`_allocate_many`): each Decimal operation of the one-user
`recommendations.allocate` is applied elementwise, to the same operands in the same order,
so every amount, percentage and gap is the very Decimal `allocate` gives (digits and
exponent); the minimum re-split and units refused by a class's cap are done on arrays too.
Users the arrays do not take are detected by exact conditions and go through `allocate`
itself: a class below its minimum (the filling is redone without it), a class name or an
asset twice, a priced holding of a class the user lacks, a contribution of 10^20 or more
(about 0.1% of the benchmark's users, all of them below a minimum).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.money import FxRates, MissingRateError, quantum
from overnight_pipeline.core.recommendations import (
    HUNDRED,
    NO_ELIGIBLE_ASSET,
    PERCENT_PLACES,
    ZERO,
    ClassResult,
    ClassSpec,
    Pick,
    RecommendedAsset,
    UserRecommendations,
    allocate,
)
from overnight_pipeline.core.scoring import (
    MISSING_FUNDAMENTAL,
    SCORE_PLACES,
    AssetScore,
    RuleOutcome,
)
from overnight_pipeline.core.vocabulary import METRICS

HOLDING_COLUMNS = (
    "user_id",
    "asset_id",
    "symbol",
    "asset_class",
    "quantity",
    "currency",
    "price",
    "price_as_of",
)
RULE_COLUMNS = ("user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points")
CLASS_COLUMNS = (
    "user_id",
    "name",
    "target_min",
    "target_max",
    "max_assets",
    "min_allocation_value",
)
USER_COLUMNS = ("user_id", "base_currency", "contribution", "criteria_version")

ONE = Decimal(1)
_OPS = ("exists", "gt", "lt", "gte", "lte", "equals", "between")
_OP_INDEX = {op: i for i, op in enumerate(_OPS)}
_METRIC_INDEX = {m: i for i, m in enumerate(METRICS)}
_METRIC_NAMES = np.array(METRICS, dtype=object)
# matched[op, sign(actual - value) + 1] for the one-value operators (rows 0 and 6 unused).
_MATCH = np.array(
    [
        [False, False, False],
        [False, False, True],
        [True, False, False],
        [False, True, True],
        [True, True, False],
        [False, True, False],
        [False, False, False],
    ]
)


@dataclass(frozen=True)
class Batch:
    """The inputs of a batch of users, one frame per kind of row.

    `users`: user_id, base_currency, contribution (Decimal or None), criteria_version.
    `classes`: user_id, name, target_min, target_max, max_assets, min_allocation_value, in
    each user's class order. `holdings`: user_id, asset_id, symbol, asset_class, quantity,
    currency, price (Decimal or None), price_as_of, in each user's holding order.
    `rules`: user_id, id, asset_class, metric, operator, value, value2, points, in each
    user's document order. `fundamentals`: indexed by asset_id, one column per metric
    (Decimal or None), or a `FundamentalsTable` prepared once for many batches. Decimal
    columns have object dtype.
    """

    users: pd.DataFrame
    classes: pd.DataFrame
    holdings: pd.DataFrame
    rules: pd.DataFrame
    fundamentals: pd.DataFrame | FundamentalsTable


@dataclass(frozen=True)
class _HoldingKeys:
    """What scoring learnt about the holding rows of a frame, for the recommendations."""

    holdings: pd.DataFrame  # the frame described (recognised by identity)
    users: dict[Any, int]  # user_id -> code, in order of first appearance
    user_code: np.ndarray
    class_code: np.ndarray  # per holding, into class_names
    class_names: list[Any]
    asset_row: np.ndarray  # row of the fundamentals table; the same row is the same asset_id
    unknown_row: int  # the row of assets without fundamentals


@dataclass(frozen=True)
class BatchScores:
    """Scores per holding row of the batch, and the breakdown per (holding, rule)."""

    holdings: pd.DataFrame  # user_id, asset_id, asset_class, score, score_points,
    # max_possible_score, criteria_count, top_contributor (aligned with Batch.holdings)
    breakdown: pd.DataFrame  # holding (row of `holdings`), criterion_id, metric, matched,
    # points_awarded, actual_value, skipped_reason; rows grouped by holding, rules in order
    _keys: _HoldingKeys | None = field(default=None, repr=False, compare=False)

    def asset_scores(self) -> dict[Any, dict[str, AssetScore]]:
        """Full `AssetScore` objects per user (for tests, replays and small batches)."""
        b = self.breakdown
        outcomes: list[list[RuleOutcome]] = [[] for _ in range(len(self.holdings))]
        for h, cid, metric, matched, points, actual, skipped in zip(
            b["holding"].tolist(),
            b["criterion_id"].tolist(),
            b["metric"].tolist(),
            b["matched"].tolist(),
            b["points_awarded"].tolist(),
            b["actual_value"].tolist(),
            b["skipped_reason"].tolist(),
            strict=True,
        ):
            outcomes[h].append(RuleOutcome(cid, metric, matched, points, actual, skipped))
        result: dict[Any, dict[str, AssetScore]] = {}
        s = self.holdings
        for i, (user_id, asset_id, score, max_score, top) in enumerate(
            zip(
                s["user_id"].tolist(),
                s["asset_id"].tolist(),
                s["score"].tolist(),
                s["max_possible_score"].tolist(),
                s["top_contributor"].tolist(),
                strict=True,
            )
        ):
            result.setdefault(user_id, {})[asset_id] = AssetScore(
                asset_id, score, max_score, top, tuple(outcomes[i])
            )
        return result


@dataclass(frozen=True)
class BatchResult:
    scores: BatchScores
    recommendations: dict[Any, UserRecommendations]
    failures: dict[Any, Exception]


def run_batch(batch: Batch, fx: FxRates, *, one_by_one: set[Any] | None = None) -> BatchResult:
    """Score every holding of the batch and recommend for every user (`one_by_one`: see
    `recommend_batch`).

    The garbage collector keeps running: pausing it is process-wide, and steps share a
    process. Its cost here (`bench/core_bench.py --users 20000 --loop-users 0`, three runs
    each, alternating, busy machine): 102-139 µs/user (median 126) against 89-153 (median
    97) when the batch paused it."""
    scores = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recs, failures = recommend_batch(batch, scores, fx, one_by_one=one_by_one)
    return BatchResult(scores, recs, failures)


# Scoring ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FundamentalsTable:
    """Fundamentals prepared once for many batches: the exact Decimals (None = null) and
    their floats (NaN = null), one row per asset plus an all-null row for unknown assets."""

    index: pd.Index
    exact: np.ndarray
    approx: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame) -> FundamentalsTable:
        exact = frame.reindex(columns=list(METRICS)).to_numpy(dtype=object)
        exact = np.vstack([exact, np.full((1, len(METRICS)), None, dtype=object)])
        return cls(frame.index, exact, _to_float(exact))

    @cached_property
    def _row_of(self) -> dict[Any, int]:
        if not self.index.is_unique:
            raise ValueError("fundamentals: an asset_id appears twice")
        return {asset_id: i for i, asset_id in enumerate(self.index.tolist())}

    def rows(self, asset_ids: np.ndarray) -> np.ndarray:
        """The row of each asset id (the all-null row when unknown)."""
        listed = asset_ids.tolist()
        found = map(self._row_of.get, listed, repeat(len(self.index)))
        return np.fromiter(found, dtype=np.int64, count=len(listed))


def score_batch(
    holdings: pd.DataFrame, rules: pd.DataFrame, fundamentals: pd.DataFrame | FundamentalsTable
) -> BatchScores:
    """SPEC §2 for every holding row against its user's rules for the holding's class."""
    n = len(holdings)
    # One integer key per (user, class), shared by holdings and rules.
    users: dict[Any, int] = {}
    h_user = _run_codes(holdings["user_id"].to_numpy(dtype=object), users, grow=True)
    r_user = _run_codes(rules["user_id"].to_numpy(dtype=object), users, grow=False)
    h_class = holdings["asset_class"].to_numpy(dtype=object)
    class_codes, class_uniques = pd.factorize(
        np.concatenate([h_class, rules["asset_class"].to_numpy(dtype=object)]),
        use_na_sentinel=False,
    )
    n_classes = max(len(class_uniques), 1)
    h_key = h_user * n_classes + class_codes[:n]
    r_key = np.where(r_user >= 0, r_user * n_classes + class_codes[n:], -1)

    # Rules sorted by key; the stable sort keeps each user's document order.
    r_order = np.argsort(r_key, kind="stable")
    r_sorted = r_key[r_order]
    lo = np.searchsorted(r_sorted, h_key, "left")
    counts = np.searchsorted(r_sorted, h_key, "right") - lo
    total = int(counts.sum())
    h_idx = np.repeat(np.arange(n), counts)
    starts = np.cumsum(counts) - counts
    r_idx = r_order[np.repeat(lo - starts, counts) + np.arange(total)]

    table = (
        fundamentals
        if isinstance(fundamentals, FundamentalsTable)
        else (FundamentalsTable.of(fundamentals))
    )
    a_row = table.rows(holdings["asset_id"].to_numpy(dtype=object))

    metric_code = _codes_of(rules["metric"].to_numpy(dtype=object), _METRIC_INDEX)
    op_code = _codes_of(rules["operator"].to_numpy(dtype=object), _OP_INDEX)
    points = rules["points"].to_numpy(dtype=np.int64)
    v1_obj = rules["value"].to_numpy(dtype=object)
    v2_obj = rules["value2"].to_numpy(dtype=object)

    rows_m = metric_code[r_idx]
    cell = a_row[h_idx] * len(METRICS) + rows_m  # (asset, metric) in the flat tables
    f_obj = table.exact.reshape(-1)
    actual = table.approx.reshape(-1)[cell]
    null = np.isnan(actual)
    op = op_code[r_idx]
    cmp1 = _compare(actual, null, _floats(v1_obj)[r_idx], f_obj, cell, v1_obj, r_idx)
    between = op == _OP_INDEX["between"]
    matched = _MATCH[op, cmp1 + 1]
    if between.any():
        b = np.flatnonzero(between)
        cmp2 = _compare(
            actual[b], null[b], _floats(v2_obj)[r_idx[b]], f_obj, cell[b], v2_obj, r_idx[b]
        )
        matched[b] = (cmp1[b] >= 0) & (cmp2 <= 0)
    exists = op == _OP_INDEX["exists"]
    matched[exists] = ~null[exists]
    skipped = null & ~exists
    matched &= ~skipped
    rule_points = points[r_idx]
    awarded = np.where(matched, rule_points, 0)

    score_points = np.bincount(h_idx, weights=awarded, minlength=n).round().astype(np.int64)
    max_points = np.bincount(h_idx, weights=np.maximum(rule_points, 0), minlength=n)
    top = np.full(n, None, dtype=object)
    m = np.flatnonzero(matched)
    if len(m):
        hm = h_idx[m]
        group_start = np.flatnonzero(np.r_[True, hm[1:] != hm[:-1]])
        best = np.maximum.reduceat(rule_points[m], group_start)
        sizes = np.diff(np.r_[group_start, len(m)])
        at_best = m[rule_points[m] == np.repeat(best, sizes)]
        hb = h_idx[at_best]
        first = at_best[np.r_[True, hb[1:] != hb[:-1]]]
        top[h_idx[first]] = _METRIC_NAMES[rows_m[first]]

    scored = pd.DataFrame(
        {
            "user_id": _objects(holdings["user_id"].to_numpy(dtype=object)),
            "asset_id": _objects(holdings["asset_id"].to_numpy(dtype=object)),
            "asset_class": _objects(h_class),
            "score": _objects(_decimal_cache(score_points)),
            "score_points": score_points,
            "max_possible_score": _objects(_decimal_cache(max_points.round().astype(np.int64))),
            "criteria_count": counts,
            "top_contributor": _objects(top),
        },
        copy=False,
    )
    actual_obj = f_obj[cell]
    actual_obj[skipped] = None
    reason = np.full(len(h_idx), None, dtype=object)
    reason[skipped] = MISSING_FUNDAMENTAL
    breakdown = pd.DataFrame(
        {
            "holding": h_idx,
            "criterion_id": _objects(rules["id"].to_numpy(dtype=object)[r_idx]),
            "metric": _objects(_METRIC_NAMES[rows_m]),
            "matched": matched,
            "points_awarded": awarded,
            "actual_value": _objects(actual_obj),
            "skipped_reason": _objects(reason),
        },
        copy=False,
    )
    keys = _HoldingKeys(
        holdings, users, h_user, class_codes[:n], class_uniques.tolist(), a_row, len(table.index)
    )
    return BatchScores(scored, breakdown, keys)


def _decimal_cache(values: np.ndarray) -> np.ndarray:
    """Decimal(v) quantized to 4 places for integer points, computed once per distinct value."""
    if not len(values):
        return np.empty(0, dtype=object)
    lo = int(values.min())
    offset = values - lo
    table = np.full(int(offset.max()) + 1, None, dtype=object)
    present = np.flatnonzero(np.bincount(offset))
    table[present] = [Decimal(int(v) + lo).quantize(SCORE_PLACES) for v in present.tolist()]
    out: np.ndarray = table[offset]
    return out


def _run_codes(values: np.ndarray, codes: dict[Any, int], *, grow: bool) -> np.ndarray:
    """A code per value from `codes` (new values get the next code when `grow`, else -1),
    looked up once per run of equal neighbours (a user's rows come together)."""
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    heads = values[starts].tolist()
    if grow:
        found = [codes.setdefault(v, len(codes)) for v in heads]
    else:
        found = [codes.get(v, -1) for v in heads]
    return np.repeat(np.array(found, dtype=np.int64), np.diff(np.r_[starts, n]))


def _codes_of(values: np.ndarray, index: Mapping[Any, int]) -> np.ndarray:
    """index[v] for every v, looked up once per distinct value."""
    codes, uniques = pd.factorize(values)
    if (codes < 0).any():
        raise ValueError("a rule without a metric or operator")
    try:
        table = np.array([index[v] for v in uniques.tolist()] + [-1], dtype=np.int64)
    except KeyError as exc:
        raise ValueError(f"unknown {exc.args[0]!r}") from None
    return table[codes]


def _objects(values: np.ndarray) -> pd.Series:
    # Object dtype on purpose: pandas would turn str/None columns into str with NaN.
    return pd.Series(values, dtype=object, copy=False)


def _to_float(values: np.ndarray) -> np.ndarray:
    """Floats of an object array of Decimal/None (None → NaN)."""
    flat = values.ravel()
    out = np.fromiter((np.nan if v is None else float(v) for v in flat), np.float64, len(flat))
    return out.reshape(values.shape)


def _floats(values: np.ndarray) -> np.ndarray:
    """`_to_float` of a column with few distinct values: float(Decimal) is slow, str() is
    not, and equal strings are equal Decimals."""
    seen: dict[str, float] = {}
    out = [
        np.nan if v is None else seen[k] if (k := str(v)) in seen else seen.setdefault(k, float(v))
        for v in values.tolist()
    ]
    return np.array(out, dtype=np.float64)


def _compare(
    actual: np.ndarray,
    null: np.ndarray,
    value: np.ndarray,
    f_obj: np.ndarray,
    cell: np.ndarray,
    value_obj: np.ndarray,
    r_idx: np.ndarray,
) -> np.ndarray:
    """Exact sign of (actual − value) per row: floats first, Decimals where floats tie."""
    cmp = (actual > value).astype(np.int8) - (actual < value).astype(np.int8)
    tie = (actual == value) & ~null
    for i in np.flatnonzero(tie).tolist():
        a: Decimal = f_obj[cell[i]]
        v: Decimal = value_obj[r_idx[i]]
        cmp[i] = (a > v) - (a < v)
    return cmp


# Recommendations --------------------------------------------------------------------------


def recommend_batch(
    batch: Batch,
    scores: BatchScores,
    fx: FxRates,
    *,
    vectorised: bool = True,
    one_by_one: set[Any] | None = None,
) -> tuple[dict[Any, UserRecommendations], dict[Any, Exception]]:
    """SPEC §3 for every user of the batch; a user whose data fails (e.g. a missing rate)
    is reported in the second dict and the others carry on.

    Users are allocated all at once on arrays (`_allocate_many`) with the same Decimal
    operations as `allocate`; a user whose allocation takes one of its rare iterative
    branches goes through `allocate` itself, and is added to `one_by_one` when given.
    `vectorised=False` sends every user through `allocate`.
    """
    return _recommend_batch(batch, scores, fx, vectorised, one_by_one)


def _recommend_batch(
    batch: Batch,
    scores: BatchScores,
    fx: FxRates,
    vectorised: bool,
    one_by_one: set[Any] | None,
) -> tuple[dict[Any, UserRecommendations], dict[Any, Exception]]:
    users = batch.users
    h = batch.holdings
    n = len(h)
    user_list = users["user_id"].tolist()
    base_list = users["base_currency"].tolist()
    n_users = len(user_list)
    row_of = {uid: u for u, uid in enumerate(user_list)}  # the last row of a repeated id
    keys = scores._keys if scores._keys is not None and scores._keys.holdings is h else None
    h_user_ids = h["user_id"].to_numpy(dtype=object)
    if keys is not None:
        to_row = np.array([row_of.get(uid, -1) for uid in keys.users] + [-1], dtype=np.int64)
        h_user = to_row[keys.user_code]
    else:
        h_user = _run_codes(h_user_ids, row_of, grow=False)

    # 1. Values in the base currency, one rate per distinct (currency, base) pair.
    price = h["price"].to_numpy(dtype=object)
    priced = _present(price)
    currencies: dict[Any, int] = {}  # a user's holdings often share a currency: runs
    cur_code = _run_codes(h["currency"].to_numpy(dtype=object), currencies, grow=True)
    base_code, base_uniques = pd.factorize(np.array(base_list, dtype=object), use_na_sentinel=False)
    n_b = len(base_uniques) + 1  # code 0: a holding of a user missing from `users`
    known = h_user >= 0
    pair = cur_code.astype(np.int64) * n_b
    pair[known] += base_code[h_user[known]] + 1
    pairs = np.flatnonzero(np.bincount(pair)) if n else pair
    pair_index = np.zeros(int(pairs.max()) + 1 if len(pairs) else 0, dtype=np.int64)
    pair_index[pairs] = np.arange(len(pairs))
    pair_of_row = pair_index[pair]
    base_values = [np.nan, *base_uniques.tolist()]
    cur_values = list(currencies)
    rates = np.empty(len(pairs), dtype=object)
    bad_pair = np.zeros(len(pairs), dtype=bool)
    one_pair = np.zeros(len(pairs), dtype=bool)
    for j, key in enumerate(pairs.tolist()):
        try:
            r = fx.rate(cur_values[key // n_b], base_values[key % n_b])
        except MissingRateError as exc:
            rates[j], bad_pair[j] = exc, True
        else:
            # x * Decimal(1) is x itself (the same digits and exponent): skip it.
            rates[j], one_pair[j] = r, r.as_tuple() == (0, (1,), 0)
    bad = bad_pair[pair_of_row] & priced
    failures: dict[Any, Exception] = {}
    for i in np.flatnonzero(bad).tolist():
        failures.setdefault(h_user_ids[i], rates[pair_of_row[i]])
    ok = priced & ~bad
    quantity = h["quantity"].to_numpy(dtype=object)
    times = ~one_pair[pair_of_row]

    def values(rows: np.ndarray) -> np.ndarray:
        """quantity × price × rate of the given (priced, rated) rows, in their order."""
        v: np.ndarray = quantity[rows] * price[rows]
        t = np.flatnonzero(times[rows])
        if len(t):
            v[t] = v[t] * rates[pair_of_row[rows[t]]]
        return v

    failed = np.zeros(n_users, dtype=bool)
    failed[h_user[bad & known]] = True
    if len(row_of) != n_users:  # a repeated user id: every row through `allocate`, as ever
        vectorised = False
    fast: dict[int, UserRecommendations] = {}
    if vectorised:
        try:
            fast = _allocate_many(batch, scores, fx, keys, row_of, h_user, values, ok, ~failed)
        except (ArithmeticError, ValueError, KeyError):
            fast = {}  # the users' own errors are reported one by one below
    scalar = ~failed
    scalar[list(fast)] = False
    slow = _allocate_each(batch, scores, fx, h_user, values, ok, scalar, failures)
    if one_by_one is not None:
        one_by_one.update(user_list[u] for u in np.flatnonzero(scalar).tolist())
    results: dict[Any, UserRecommendations] = {}
    for u, user_id in enumerate(user_list):
        got = fast.get(u) or slow.get(u)
        if got is not None and user_id not in failures:
            results[user_id] = got
    return results, failures


def _present(values: np.ndarray) -> np.ndarray:
    """Not null, as pandas' notna says (None, NaN); fast for a column of Decimal and None."""
    listed = values.tolist()
    if set(map(type, listed)) <= {Decimal, type(None)}:
        return np.fromiter((v is not None for v in listed), dtype=bool, count=len(listed))
    return ~pd.isna(values)


def _allocate_each(
    batch: Batch,
    scores: BatchScores,
    fx: FxRates,
    h_user: np.ndarray,
    values: Callable[[np.ndarray], np.ndarray],
    ok: np.ndarray,
    selected: np.ndarray,
    failures: dict[Any, Exception],
) -> dict[int, UserRecommendations]:
    """`allocate` for each selected user (by row of `batch.users`); errors go to `failures`."""
    users = batch.users
    h = batch.holdings
    out: dict[int, UserRecommendations] = {}
    chosen = np.flatnonzero(selected)
    if not len(chosen):
        return out
    user_list = users["user_id"].tolist()
    mine = np.zeros(len(h), dtype=bool)
    mine[h_user >= 0] = selected[h_user[h_user >= 0]]
    rows = np.flatnonzero(mine)
    rows = rows[np.argsort(h_user[rows], kind="stable")]
    points = scores.holdings["score_points"].to_numpy()
    elig = rows[ok[rows] & (points[rows] > 0)]
    symbol_rank, _ = pd.factorize(h["symbol"].to_numpy(dtype=object)[elig], sort=True)
    class_code, _ = pd.factorize(h["asset_class"].to_numpy(dtype=object)[elig])
    elig = elig[np.lexsort((symbol_rank, -points[elig], class_code, h_user[elig]))]
    h_bounds = _groups(h_user[rows], len(users))
    e_bounds = _groups(h_user[elig], len(users))
    local = {i: j for j, i in enumerate(rows.tolist())}

    def column(frame: pd.DataFrame, name: str) -> list[Any]:
        listed: list[Any] = frame[name].to_numpy(dtype=object)[rows].tolist()
        return listed

    asset_ids, symbols, classes_of = (
        column(h, "asset_id"),
        column(h, "symbol"),
        column(h, "asset_class"),
    )
    value_l: list[Any] = [None] * len(rows)
    ok_l = ok[rows].tolist()
    priced = np.flatnonzero(ok[rows])
    for j, v in zip(priced.tolist(), values(rows[priced]).tolist(), strict=True):
        value_l[j] = v
    price_as_of: list[Any] = column(h, "price_as_of") if "price_as_of" in h else [None] * len(rows)
    score_col, top_col = (
        column(scores.holdings, "score"),
        column(scores.holdings, "top_contributor"),
    )
    count_col = scores.holdings["criteria_count"].to_numpy()[rows].tolist()
    elig_l = [local[i] for i in elig.tolist()]
    cl = batch.classes
    specs = _class_specs(cl[cl["user_id"].isin([user_list[u] for u in chosen.tolist()])])
    bases = users["base_currency"].tolist()
    contributions = users["contribution"].tolist()
    versions = users["criteria_version"].tolist()
    for u in chosen.tolist():
        user_id = user_list[u]
        user_classes = specs.get(user_id, [])
        class_value = {c.name: ZERO for c in user_classes}
        eligible: dict[str, list[Pick]] = {c.name: [] for c in user_classes}
        prices_used: list[datetime] = []
        missing: list[str] = []
        for i in range(*h_bounds[u]):
            if ok_l[i]:
                cls = classes_of[i]
                class_value[cls] = class_value.get(cls, ZERO) + value_l[i]
                if price_as_of[i] is not None:
                    prices_used.append(price_as_of[i])
            else:
                missing.append(symbols[i])
        for j in elig_l[slice(*e_bounds[u])]:
            eligible.setdefault(classes_of[j], []).append(
                Pick(asset_ids[j], symbols[j], score_col[j], count_col[j], top_col[j])
            )
        for c in user_classes:
            if c.max_assets:
                eligible[c.name] = eligible[c.name][: c.max_assets]
        contribution, version = contributions[u], versions[u]
        try:
            out[u] = allocate(
                base_currency=bases[u],
                contribution=None if _is_null(contribution) else contribution,
                classes=user_classes,
                class_value=class_value,
                eligible=eligible,
                prices_as_of=min(prices_used) if prices_used else None,
                rates_as_of=fx.as_of,
                criteria_version=None if _is_null(version) else int(version),
                missing_prices=tuple(missing),
            )
        except (ArithmeticError, ValueError, KeyError) as exc:
            failures[user_id] = exc
    return out


def _allocate_many(
    batch: Batch,
    scores: BatchScores,
    fx: FxRates,
    keys: _HoldingKeys | None,
    row_of: dict[Any, int],
    h_user: np.ndarray,
    values: Callable[[np.ndarray], np.ndarray],
    ok: np.ndarray,
    candidate: np.ndarray,
) -> dict[int, UserRecommendations]:
    """`allocate` for the candidate users (by row of `batch.users`) all at once; a user
    whose allocation takes a rare branch of `allocate` is left out, for `allocate` itself.

    Every Decimal that reaches the output is made by the same operations, on the same
    operands and in the same order, as in `allocate`: the same Decimal, digits and exponent.
    Decimals that only steer decisions are computed to the same value (a Decimal operation's
    result depends only on the values of its operands) where `allocate` adds a `ZERO +`.
    """
    users = batch.users
    h = batch.holdings
    cl = batch.classes
    n_users = len(users)
    points = scores.holdings["score_points"].to_numpy()

    # --- Class rows per user; users the arrays do not take. --------------------------------
    usable = candidate.copy()
    c_user = _run_codes(cl["user_id"].to_numpy(dtype=object), row_of, grow=False)
    max_raw = cl["max_assets"].to_numpy(dtype=object)
    min_raw = cl["min_allocation_value"].to_numpy(dtype=object)
    max_null, min_null = _nulls(max_raw), _nulls(min_raw)
    has_class = np.zeros(n_users, dtype=bool)
    has_class[c_user[c_user >= 0]] = True
    usable &= has_class
    names_raw = cl["name"].to_numpy(dtype=object)
    if keys is not None:
        h_name = keys.class_code
        c_name, name_rank, n_names = _name_codes(keys.class_names, names_raw)
    else:
        codes, uniques = pd.factorize(
            np.concatenate([names_raw, h["asset_class"].to_numpy(dtype=object)]),
            use_na_sentinel=False,
        )
        c_name, h_name = codes[: len(cl)], codes[len(cl) :]
        name_rank = _string_ranks(uniques.tolist())
        n_names = max(len(uniques), 1)
    # A class name twice for one user: not here.
    key = np.where(c_user >= 0, c_user * n_names + c_name, -1)
    by_key = np.argsort(key, kind="stable")
    skey = key[by_key]
    dup = (skey[1:] == skey[:-1]) & (skey[1:] >= 0)
    usable[c_user[by_key[1:][dup]]] = False
    # The class row of each holding; a priced holding of a class the user lacks: not here.
    h_crow = np.full(len(h), -1, dtype=np.int64)
    known = h_user >= 0
    if len(skey):
        hk = h_user * n_names + h_name
        pos = np.minimum(np.searchsorted(skey, hk), len(skey) - 1)
        found = known & (skey[pos] == hk)
        h_crow[found] = by_key[pos[found]]
    usable[h_user[ok & known & (h_crow < 0)]] = False
    max_assets = np.zeros(len(cl), dtype=np.int64)
    set_max = np.flatnonzero(~max_null)
    max_assets[set_max] = np.fromiter(
        map(int, max_raw[set_max].tolist()), dtype=np.int64, count=len(set_max)
    )
    usable[c_user[(max_assets < 0) & (c_user >= 0)]] = False

    # --- Compact numbering: users f, class rows k (by user, in order). ----------------------
    users_f = np.flatnonzero(usable)
    n_f = len(users_f)
    if n_f == 0:
        return {}
    f_of_u = np.cumsum(usable) - 1
    c_rows = np.flatnonzero((c_user >= 0) & usable[np.maximum(c_user, 0)])
    c_rows = c_rows[np.argsort(c_user[c_rows], kind="stable")]
    n_k = len(c_rows)
    k_of_crow = np.full(len(cl) + 1, -1, dtype=np.int64)  # [-1] is the sentinel
    k_of_crow[c_rows] = np.arange(n_k)
    k_user = f_of_u[c_user[c_rows]]
    h_k = k_of_crow[h_crow]
    names = names_raw[c_rows]
    t_min = cl["target_min"].to_numpy(dtype=object)[c_rows]
    t_max = cl["target_max"].to_numpy(dtype=object)[c_rows]
    t_mid = (t_min + t_max) / 2  # ClassSpec.target_mid
    k_max = max_assets[c_rows]
    k_rank = name_rank[c_name[c_rows]]
    min_val = min_raw[c_rows]
    min_set = ~min_null[c_rows]
    min_set[min_set] = min_val[min_set] != 0  # `if minimum:` in allocate

    # Step 1: each class's value, in holding order, from ZERO; the total, from ZERO.
    v_rows = np.flatnonzero(ok & (h_k >= 0))
    v_rows = v_rows[np.argsort(h_k[v_rows], kind="stable")]
    cv = _sums(values(v_rows), h_k[v_rows], n_k, ZERO)
    total = _sums(cv, k_user, n_f, ZERO)

    # Step 3: eligible picks by class, score desc, symbol, holding order; max_assets first.
    e_rows = np.flatnonzero(ok & (h_k >= 0) & (points > 0))
    symbols_raw = h["symbol"].to_numpy(dtype=object)
    sym_rank, _ = pd.factorize(symbols_raw[e_rows], sort=True)
    order = _sort_keys(h_k[e_rows], -points[e_rows], sym_rank)
    e_rows, sym_rank = e_rows[order], sym_rank[order]
    e_pts, e_k = points[e_rows], h_k[e_rows]
    e_pos = np.arange(len(e_rows)) - np.searchsorted(e_k, e_k)
    kept = (k_max[e_k] == 0) | (e_pos < k_max[e_k])
    e_rows, sym_rank, e_pts, e_k = e_rows[kept], sym_rank[kept], e_pts[kept], e_k[kept]
    active = np.bincount(e_k, minlength=n_k) > 0
    drop = np.zeros(n_f, dtype=bool)  # users found to need `allocate` itself
    # The same asset twice among a user's picks would collide in `allocate`'s dicts.
    e_user = k_user[e_k]
    if keys is not None:
        asset = keys.asset_row[e_rows]
        drop[e_user[asset == keys.unknown_row]] = True  # scored without fundamentals
        pair_key = np.sort(e_user * (keys.unknown_row + 1) + asset)
        twice = pair_key[1:][pair_key[1:] == pair_key[:-1]] // (keys.unknown_row + 1)
    else:
        ids = h["asset_id"].to_numpy(dtype=object)[e_rows].tolist()
        asset = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))
        by_asset = np.lexsort((asset, e_user))
        eu, ea = e_user[by_asset], asset[by_asset]
        twice = eu[1:][(eu[1:] == eu[:-1]) & (ea[1:] == ea[:-1])]
    drop[twice] = True

    # --- Step 2: targets after the contribution, gaps before it. ---------------------------
    contributions = users["contribution"].to_numpy(dtype=object)[users_f].tolist()
    c_total = _objects_of([ZERO if _is_null(c) else c for c in contributions])
    # Amounts are summed here by class, then by user: the same value as `allocate`'s one
    # running sum while no sum is rounded (28 digits), which holds below 10^20.
    drop |= np.abs(c_total) >= _HUGE
    after = total + c_total
    pct = np.full(n_k, ZERO, dtype=object)
    shares_of = np.flatnonzero((total > ZERO)[k_user])
    pct[shares_of] = HUNDRED * cv[shares_of] / total[k_user[shares_of]]
    gap = t_mid - pct

    # --- Step 4: water-filling over the active classes of users with money. ----------------
    money = c_total > ZERO
    amount = np.full(n_k, ZERO, dtype=object)
    leftover = np.where(money, c_total, _ZERO)  # max(C, 0) where nothing is filled
    hi = np.full(n_k, None, dtype=object)  # computed where needed
    a_rows = np.flatnonzero(active & money[k_user])
    if len(a_rows):
        a_user = k_user[a_rows]
        mid_a = t_mid[a_rows] / HUNDRED * after[a_user]
        fu, a_grp = np.unique(a_user, return_inverse=True)
        a_grp = a_grp.reshape(-1)
        cv_a = cv[a_rows]
        got, rest = _fill_many(c_total[fu], a_grp, cv_a, mid_a, k_rank[a_rows], len(fu))
        more = rest > ZERO
        if more.any():
            rows2 = np.flatnonzero(more[a_grp])
            hi[a_rows[rows2]] = t_max[a_rows[rows2]] / HUNDRED * after[a_user[rows2]]
            g2, grp2 = np.unique(a_grp[rows2], return_inverse=True)
            got2, rest2 = _fill_many(
                rest[g2],
                grp2.reshape(-1),
                cv_a[rows2] + got[rows2],
                hi[a_rows[rows2]],
                k_rank[a_rows[rows2]],
                len(g2),
            )
            got[rows2] = got[rows2] + got2
            rest[g2] = rest2
        amount[a_rows] = got
        leftover[fu] = rest
        # A class whose amount is below its minimum is dropped and filling redone: not here.
        short = np.flatnonzero(min_set[a_rows] & (got > ZERO))
        short = short[got[short] < min_val[a_rows[short]]]
        drop[a_user[short]] = True

    # --- Step 5: split by score in the classes that receive money; minimums re-split. ------
    # Picks are rows e; the paid ones (in classes with an amount) are p_e. A class without
    # an amount splits zeros: its picks have no floor and no remainder.
    p_e = np.flatnonzero((amount > ZERO)[e_k])
    score_obj = scores.holdings["score"].to_numpy(dtype=object)
    p_k, p_score = e_k[p_e], score_obj[e_rows[p_e]]
    share = amount[p_k] * p_score / _sums(p_score, p_k, n_k, None)[p_k]
    alive = _resplit(
        share, p_k, e_pts[p_e], sym_rank[p_e], p_score, amount, min_set, min_val, k_user, drop
    )
    if alive is not None:
        p_e, share = p_e[alive], share[alive]
    p_k = e_k[p_e]
    p_user = k_user[p_k]

    # --- Step 6: largest remainder to the minor unit, never past a class's cap. ------------
    bases_f = users["base_currency"].to_numpy(dtype=object)[users_f]
    quanta = {b: quantum(b) for b in set(bases_f.tolist())}
    q_f = _objects_of([quanta[b] for b in bases_f.tolist()])
    floor = _QUANTIZE(share, q_f[p_user], ROUND_DOWN)
    rem = share - floor
    to_spend = _QUANTIZE(c_total - leftover, q_f, ROUND_DOWN)
    floor_k = _sums(floor, p_k, n_k, None)
    spare = (to_spend - _sums(floor_k, k_user, n_f, None)) / q_f
    units = np.fromiter(map(int, spare.tolist()), dtype=np.int64, count=n_f)
    # Usually each unit goes to one of the `units` largest remainders: rank those.
    has_rem = rem > ZERO
    n_rem = np.bincount(p_user[has_rem], minlength=n_f)
    plus = has_rem & (units[p_user] >= n_rem[p_user])
    pick = np.flatnonzero(has_rem & (units[p_user] > 0) & (units[p_user] < n_rem[p_user]))
    if len(pick):
        ranked = [(rem[pick], True), (e_pts[p_e[pick]], True), (sym_rank[p_e[pick]], False)]
        plus[pick] = _ranks(p_user[pick], ranked) < units[p_user[pick]]
    # Unless units outnumber the remainders, or a class would pass its cap (its max less
    # its value): then walk every pick of the user in order, as `allocate` does.
    walk = units > n_rem
    if plus.any():
        k_plus, n_plus = np.unique(p_k[plus], return_counts=True)
        _fill_none(hi, k_plus, t_max, after, k_user)
        more = _objects_of(
            [q * m for q, m in zip(q_f[k_user[k_plus]].tolist(), n_plus.tolist(), strict=True)]
        )
        walk[k_user[k_plus[floor_k[k_plus] + more > hi[k_plus] - cv[k_plus]]]] = True
    if walk.any():
        p_e, floor, plus = _walk_units(
            walk,
            units,
            p_e,
            floor,
            rem,
            plus,
            e_k,
            e_pts,
            sym_rank,
            active,
            k_user,
            q_f,
            floor_k,
            hi,
            cv,
            t_max,
            after,
        )
        p_k = e_k[p_e]
        p_user = k_user[p_k]
    p_amount = floor.copy()
    p_amount[plus] = floor[plus] + q_f[p_user[plus]]
    p_rows, p_pts, p_sym = e_rows[p_e], e_pts[p_e], sym_rank[p_e]
    p_score = score_obj[p_rows]

    # --- Step 7: output. -------------------------------------------------------------------
    r_sel = np.flatnonzero(p_amount > ZERO)
    r_k, r_user, r_amount = p_k[r_sel], p_user[r_sel], p_amount[r_sel]
    class_amount = _sums(r_amount, r_k, n_k, ZERO)
    unallocated = c_total - _sums(class_amount, k_user, n_f, ZERO)
    rank = _ranks(r_user, [(r_amount, True), (p_pts[r_sel], True), (p_sym[r_sel], False)])
    r_first = np.searchsorted(r_user, np.arange(n_f + 1))
    by_rank = np.empty(len(r_sel), dtype=np.int64)
    by_rank[r_first[r_user] + rank] = np.arange(len(r_sel))
    r_sel, r_k, r_amount = r_sel[by_rank], r_k[by_rank], r_amount[by_rank]
    gap_q = np.full(n_k, None, dtype=object)
    with_recs = np.unique(r_k)
    gap_q[with_recs] = _QUANTIZE(gap[with_recs], PERCENT_PLACES, ROUND_HALF_EVEN)
    rr = p_rows[r_sel]
    sh = scores.holdings
    recs = _tuples(
        RecommendedAsset,
        h["asset_id"].to_numpy(dtype=object)[rr],
        symbols_raw[rr],
        names[r_k],
        p_score[r_sel],
        r_amount,
        bases_f[k_user[r_k]],
        gap_q[r_k],
        sh["criteria_count"].to_numpy()[rr],
        sh["top_contributor"].to_numpy(dtype=object)[rr],
    )
    status = np.full(n_k, NO_ELIGIBLE_ASSET, dtype=object)
    status[active] = None
    class_results = _tuples(ClassResult, names, cv, pct, t_min, t_max, gap, class_amount, status)

    # Freshness and missing prices per user.
    in_f = known & usable[np.maximum(h_user, 0)]
    missing: dict[int, list[Any]] = {}
    for i in np.flatnonzero(in_f & ~ok).tolist():
        missing.setdefault(int(f_of_u[h_user[i]]), []).append(symbols_raw[i])
    as_of = np.full(n_f, None, dtype=object)
    if "price_as_of" in h:
        rows = np.flatnonzero(in_f & ok)
        stamps = h["price_as_of"].to_numpy(dtype=object)[rows]
        listed = stamps.tolist()
        used = np.not_equal(stamps, _NONE)  # `is not None` for datetimes and None
        if not set(map(type, listed)) <= {datetime, type(None)}:
            # min() and np.minimum agree (the first least) while values are ordered; NaT
            # is not: leave such users to `allocate`.
            used = np.array([v is not None for v in listed], dtype=bool)
            drop[f_of_u[h_user[rows[used & pd.isna(stamps)]]]] = True
        rows, stamps = rows[used], stamps[used]
        g = f_of_u[h_user[rows]]
        if len(g) and (np.diff(g) < 0).any():
            order = np.argsort(g, kind="stable")
            g, stamps = g[order], stamps[order]
        if len(g):
            heads = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            as_of[g[heads]] = np.minimum.reduceat(stamps, heads)
    versions = users["criteria_version"].to_numpy(dtype=object)[users_f].tolist()

    out: dict[int, UserRecommendations] = {}
    k_first = np.searchsorted(k_user, np.arange(n_f + 1)).tolist()
    r_bounds = r_first.tolist()
    users_l, bases_l, c_l = users_f.tolist(), bases_f.tolist(), c_total.tolist()
    total_l, un_l, as_of_l = total.tolist(), unallocated.tolist(), as_of.tolist()
    for f in np.flatnonzero(~drop).tolist():
        version = versions[f]
        out[users_l[f]] = _user_recommendations(
            bases_l[f],
            c_l[f],
            total_l[f],
            tuple(recs[r_bounds[f] : r_bounds[f + 1]]),
            un_l[f],
            tuple(class_results[k_first[f] : k_first[f + 1]]),
            as_of_l[f],
            fx.as_of,
            None if _is_null(version) else int(version),
            tuple(missing.get(f, ())),
        )
    return out


def _resplit(
    share: np.ndarray,
    p_k: np.ndarray,
    p_pts: np.ndarray,
    p_sym: np.ndarray,
    p_score: np.ndarray,
    amount: np.ndarray,
    min_set: np.ndarray,
    min_val: np.ndarray,
    k_user: np.ndarray,
    drop: np.ndarray,
) -> np.ndarray | None:
    """`split_by_score`'s minimum rule on the picks of classes with a minimum: while a share
    is below it, drop the lowest-scored such pick (ties: the later symbol, then the first)
    and re-split. Updates `share` in place; returns which picks remain (None: all do)."""
    rows = np.flatnonzero(min_set[p_k])
    if not len(rows):
        return None
    alive = np.ones(len(p_k), dtype=bool)
    while len(rows):
        low = rows[share[rows] < min_val[p_k[rows]]]
        if not len(low):
            break
        # Shares grow with the score, so the lowest score is low whenever any pick is; the
        # pick to drop is the first of the last (score, symbol) run of the class.
        rows = rows[np.isin(p_k[rows], p_k[low])]
        k = p_k[rows]
        last = rows[np.r_[k[1:] != k[:-1], True]]
        last_of = np.repeat(last, np.diff(np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1, len(k)]))
        run = rows[(p_pts[rows] == p_pts[last_of]) & (p_sym[rows] == p_sym[last_of])]
        rk = p_k[run]
        worst = run[np.r_[True, rk[1:] != rk[:-1]]]
        alive[worst] = False
        rows = rows[alive[rows]]
        drop[k_user[np.setdiff1d(p_k[worst], p_k[rows])]] = True  # no pick left: not here
        share[rows] = (
            amount[p_k[rows]]
            * p_score[rows]
            / _sums(p_score[rows], p_k[rows], len(amount), None)[p_k[rows]]
        )
    return None if alive.all() else alive


def _sort_keys(*keys: np.ndarray) -> np.ndarray:
    """The stable order by integer keys, most significant first (as np.lexsort)."""
    combined = np.zeros(len(keys[0]), dtype=np.int64)
    span = 1
    for key in reversed(keys):
        if not len(key):
            break
        lo = int(key.min())
        width = int(key.max()) - lo + 1
        if span * width >= 2**62:
            return np.lexsort(keys[::-1])
        combined += (key - lo) * span
        span *= width
    return np.argsort(combined, kind="stable")


def _fill_none(
    hi: np.ndarray, k: np.ndarray, t_max: np.ndarray, after: np.ndarray, k_user: np.ndarray
) -> None:
    """hi = max / HUNDRED × T' for the classes k where it is not known yet."""
    k = k[np.array([v is None for v in hi[k].tolist()], dtype=bool)]
    hi[k] = t_max[k] / HUNDRED * after[k_user[k]]


def _walk_units(
    walk: np.ndarray,
    units: np.ndarray,
    p_e: np.ndarray,
    floor: np.ndarray,
    rem: np.ndarray,
    plus: np.ndarray,
    e_k: np.ndarray,
    e_pts: np.ndarray,
    sym_rank: np.ndarray,
    active: np.ndarray,
    k_user: np.ndarray,
    q_f: np.ndarray,
    floor_k: np.ndarray,
    hi: np.ndarray,
    cv: np.ndarray,
    t_max: np.ndarray,
    after: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`round_largest_remainder` for the users in `walk`: every pick of the user (with a
    share of zero too) in order of remainder desc, score desc, symbol, then pick order;
    each takes a unit while units are left unless its class would pass its cap. The j-th
    unit of class k is refused exactly when floors_k + j·q > cap_k, whoever it goes to, so
    a pick takes one when it comes within the class's first units that fit and within the
    user's first `units` such picks. Returns p_e, floor and plus with the zero-share picks
    that took a unit added (in pick order)."""
    e_user = k_user[e_k]
    in_walk = np.flatnonzero(walk[e_user] & active[e_k])
    paid_at = np.full(len(e_k), -1, dtype=np.int64)
    paid_at[p_e] = np.arange(len(p_e))
    # The picks of a paid class that a minimum dropped are out; zero-share picks are in.
    in_walk = in_walk[(paid_at[in_walk] >= 0) | ~np.isin(e_k[in_walk], e_k[p_e])]
    g_user, g_k, at = e_user[in_walk], e_k[in_walk], paid_at[in_walk]
    g_rem = np.full(len(in_walk), ZERO, dtype=object)
    g_rem[at >= 0] = rem[at[at >= 0]]
    order = _ranks(g_user, [(g_rem, True), (e_pts[in_walk], True), (sym_rank[in_walk], False)])
    # Each pick's place among its class's picks in that order: it would be unit j + 1.
    by_class = _sort_keys(g_k, order)
    nth = np.empty(len(in_walk), dtype=np.int64)
    first_of_k = np.searchsorted(g_k[by_class], g_k[by_class])
    nth[by_class] = np.arange(len(in_walk)) - first_of_k + 1
    _fill_none(hi, np.unique(g_k), t_max, after, k_user)
    fits = floor_k[g_k] + q_f[g_user] * _objects_of(nth.tolist()) <= hi[g_k] - cv[g_k]
    # The user's first `units` picks that fit, in order.
    by_user = np.argsort(g_user * (len(in_walk) + 1) + order, kind="stable")
    fit_sorted = fits[by_user].astype(np.int64)
    before = np.cumsum(fit_sorted) - fit_sorted
    u_sorted = g_user[by_user]
    before -= before[np.searchsorted(u_sorted, u_sorted)]
    took = np.empty(len(in_walk), dtype=bool)
    took[by_user] = fits[by_user] & (before < units[u_sorted])
    plus = plus.copy()
    plus[walk[k_user[e_k[p_e]]]] = False
    plus[at[took & (at >= 0)]] = True
    new = in_walk[took & (at < 0)]
    if not len(new):
        return p_e, floor, plus
    zero = _QUANTIZE(np.full(len(new), ZERO, dtype=object), q_f[e_user[new]], ROUND_DOWN)
    p_e = np.concatenate([p_e, new])
    floor = np.concatenate([floor, zero])
    plus = np.concatenate([plus, np.ones(len(new), dtype=bool)])
    order = np.argsort(p_e, kind="stable")
    return p_e[order], floor[order], plus[order]


_QUANTIZE: Any = np.frompyfunc(Decimal.quantize, 3, 1)  # elementwise x.quantize(q, rounding)
_ZERO, _ONE, _NONE = (np.array(v, dtype=object) for v in (ZERO, ONE, None))  # 0-d, for np.where
_HUGE = Decimal("1E+20")
_USER_FIELDS = tuple(f.name for f in fields(UserRecommendations))
# The dataclass' generated __init__ only sets each field (no __post_init__, no slots);
# setting them in one step is 5x cheaper and gives an equal object.
_PLAIN_USER = not hasattr(UserRecommendations, "__post_init__") and hasattr(
    UserRecommendations, "__dict__"
)


def _user_recommendations(*values: Any) -> UserRecommendations:
    if not _PLAIN_USER:
        return UserRecommendations(*values)
    obj = object.__new__(UserRecommendations)
    obj.__dict__.update(zip(_USER_FIELDS, values, strict=True))
    return obj


def _tuples(cls: Any, *columns: np.ndarray) -> list[Any]:
    """NamedTuples of `cls` from columns (tuple.__new__ directly: no Python frame per row)."""
    return list(map(tuple.__new__, repeat(cls), zip(*(c.tolist() for c in columns), strict=True)))


def _objects_of(values: list[Any]) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=len(values))


def _nulls(values: np.ndarray) -> np.ndarray:
    """What `_is_null` says of each value (None or a float NaN)."""
    listed = values.tolist()
    if float not in set(map(type, listed)):
        return np.fromiter((v is None for v in listed), dtype=bool, count=len(listed))
    return np.fromiter(map(_is_null, listed), dtype=bool, count=len(listed))


def _name_codes(known: list[Any], names: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Codes of class names continuing the holdings' class codes, the rank of each code in
    string order, and the number of codes."""
    index = {name: i for i, name in enumerate(known)}
    extra: dict[Any, int] = {}
    codes = [
        index[v] if v in index else extra.setdefault(v, len(known) + len(extra))
        for v in names.tolist()
    ]
    every = known + list(extra)
    return np.array(codes, dtype=np.int64), _string_ranks(every), max(len(every), 1)


def _string_ranks(values: list[Any]) -> np.ndarray:
    """The position of each value in sorted order (class names: strings)."""
    if not all(isinstance(v, str) for v in values):
        raise ValueError("class names must be strings")  # every user through `allocate`
    ranks = np.empty(len(values), dtype=np.int64)
    ranks[sorted(range(len(values)), key=values.__getitem__)] = np.arange(len(values))
    return ranks


def _sums(values: np.ndarray, groups: np.ndarray, n: int, start: Decimal | None) -> np.ndarray:
    """Per group 0..n-1 (`groups` ascending): `start + v1 + v2 + ...` left to right, as
    `sum(values, start)`; `start=None` sums the values alone (the same value, without the
    exponent a ZERO start may give). A group without values gets `start` (or ZERO)."""
    out = np.full(n, ZERO if start is None else start, dtype=object)
    m = len(values)
    if m == 0:
        return out
    heads = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    if start is None:
        out[groups[heads]] = np.add.reduceat(values, heads)
        return out
    slots = heads + np.arange(len(heads))
    chain = np.empty(m + len(heads), dtype=object)
    chain[slots] = start
    shift = np.zeros(m, dtype=np.int64)
    shift[heads] = 1
    chain[np.arange(m) + np.cumsum(shift)] = values
    out[groups[heads]] = np.add.reduceat(chain, slots)
    return out


def _last_of(groups: np.ndarray, alive: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """For each wanted group, the last alive row of it (an array indexed by group)."""
    rows = np.flatnonzero(alive & np.isin(groups, wanted))
    last = np.full(int(groups.max()) + 1 if len(groups) else 0, -1, dtype=np.int64)
    last[groups[rows]] = rows  # later rows overwrite earlier ones
    return last


def _ranks(groups: np.ndarray, keys: list[tuple[np.ndarray, bool]]) -> np.ndarray:
    """Position of each row within its group (`groups` ascending) when the group is sorted
    by `keys` (most significant first; each an array and whether descending), ties in row
    order: what a stable sort gives. Compares each pair of rows once: for small groups."""
    m = len(groups)
    if m == 0:
        return np.empty(0, dtype=np.int64)
    ends = np.r_[np.flatnonzero(groups[1:] != groups[:-1]) + 1, m]
    after = np.repeat(ends, np.diff(np.r_[0, ends])) - np.arange(m) - 1  # later rows in group
    i = np.repeat(np.arange(m), after)
    j = i + 1 + np.arange(len(i)) - np.repeat(np.cumsum(after) - after, after)
    j_first = np.zeros(len(i), dtype=bool)  # i < j: does j come before i?
    undecided = np.arange(len(i))
    for arr, descending in keys:
        if not len(undecided):
            break
        a, b = arr[j[undecided]], arr[i[undecided]]
        first = (a > b) if descending else (a < b)
        j_first[undecided[first]] = True
        undecided = undecided[~first & (a == b)]
    return (
        np.bincount(i, weights=j_first, minlength=m) + np.bincount(j, weights=~j_first, minlength=m)
    ).astype(np.int64)


def _fill_many(
    money: np.ndarray,
    groups: np.ndarray,
    value: np.ndarray,
    target: np.ndarray,
    name_rank: np.ndarray,
    n: int,
) -> tuple[np.ndarray, np.ndarray]:
    """`_fill` for n groups at once (rows: classes, `groups` ascending, each group's classes
    in order; `name_rank` orders class names). The amounts per row and the money left per
    group have the values `_fill` gives."""
    diff = target - value
    need = np.where(diff > ZERO, diff, _ZERO)  # max(ZERO, diff)
    needed = _sums(need, groups, n, None)
    full = needed <= money
    rest = np.full(n, ZERO, dtype=object)
    rest[full] = money[full] - needed[full]
    amounts = need
    part = ~full[groups]
    if not part.any():
        return amounts, rest
    amounts[part] = ZERO
    rows = np.flatnonzero(part & (target > ZERO))
    if not len(rows):
        return amounts, rest
    # Breakpoints f_k = v_k / t_k (0 when v_k <= 0), walked in (f_k, name) order.
    g, v, t = groups[rows], value[rows], target[rows]
    brk = np.full(len(rows), ZERO, dtype=object)
    pos = np.flatnonzero(v > ZERO)
    brk[pos] = v[pos] / t[pos]
    rank = _ranks(g, [(brk, False), (name_rank[rows], False)])
    heads = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[heads, len(rows)])
    by_rank = np.empty(len(rows), dtype=np.int64)
    by_rank[np.repeat(heads, sizes) + rank] = np.arange(len(rows))
    grp_money = money[g[heads]]
    f = np.full(len(heads), ZERO, dtype=object)
    t_sum = np.full(len(heads), ZERO, dtype=object)
    v_sum = np.full(len(heads), ZERO, dtype=object)
    walking = np.arange(len(heads))
    step = 0
    while len(walking):
        r = by_rank[heads[walking] + step]
        t_sum[walking] = t_sum[walking] + t[r]
        v_sum[walking] = v_sum[walking] + v[r]
        f_w = (grp_money[walking] + v_sum[walking]) / t_sum[walking]
        f[walking] = f_w
        more = np.flatnonzero(step + 1 < sizes[walking])
        more = more[~(f_w[more] <= brk[by_rank[heads[walking[more]] + step + 1]])]
        walking = walking[more]
        step += 1
    f = np.where(f > ONE, _ONE, f)  # min(f, Decimal(1))
    level = np.repeat(f, sizes) * t - v
    amounts[rows] = np.where(level > ZERO, level, _ZERO)
    return amounts, rest


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _groups(sorted_codes: np.ndarray, size: int) -> list[tuple[int, int]]:
    """(start, stop) of each code 0..size-1 in an array sorted by code."""
    codes = np.arange(size)
    start = np.searchsorted(sorted_codes, codes, "left")
    stop = np.searchsorted(sorted_codes, codes, "right")
    return list(zip(start.tolist(), stop.tolist(), strict=True))


def _class_specs(classes: pd.DataFrame) -> dict[Any, list[ClassSpec]]:
    specs: dict[Any, list[ClassSpec]] = {}
    for user_id, name, lo, hi, max_assets, min_value in zip(
        *(classes[c].tolist() for c in CLASS_COLUMNS), strict=True
    ):
        specs.setdefault(user_id, []).append(
            ClassSpec._make(
                (
                    name,
                    lo,
                    hi,
                    None if _is_null(max_assets) else int(max_assets),
                    None if _is_null(min_value) else min_value,
                )
            )
        )
    return specs
