"""Scoring and recommendations for a whole batch of users at once.

The row-heavy work (every holding against every rule of its class, valuation, eligibility
and ordering) is vectorised with numpy/pandas. Rule comparisons run on floats and fall back
to Decimal wherever the floats are equal, which keeps them exact: float(Decimal) is
monotonic, so unequal floats order their Decimals the same way.

Money is exact: `quantity × price` products and their sums per user, class and currency
are Decimal with no rounding (`allocation.EXACT`), rates exact ratios, and each user's
steps 2-7 are the one-user path's own `recommendations.allocate` on integers
(`core/allocation.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.allocation import EXACT, ClassTable, add_ratio, allocate_exact
from overnight_pipeline.core.money import FxRates, MissingRateError, minor_unit
from overnight_pipeline.core.recommendations import (
    ZERO,
    ClassSpec,
    Picks,
    UserRecommendations,
    check_unique,
    result_of,
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


def run_batch(batch: Batch, fx: FxRates) -> BatchResult:
    """Score every holding of the batch and recommend for every user.

    The garbage collector keeps running: pausing it is process-wide, and steps share a
    process (its cost: docs/PERFORMANCE.md)."""
    scores = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recs, failures = recommend_batch(batch, scores, fx)
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
    """BEHAVIOUR §2 for every holding row against its user's rules for the holding's class."""
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
    batch: Batch, scores: BatchScores, fx: FxRates
) -> tuple[dict[Any, UserRecommendations], dict[Any, Exception]]:
    """BEHAVIOUR §3 for every user of the batch; a user whose data fails (a missing rate, a
    value that is not a finite decimal, a class or asset twice) is reported in the second
    dict and the others carry on.

    The row work is done on arrays: exact `quantity × price` products summed per class row
    and currency, one exact rate per (currency, base) pair, the eligible assets in order.
    Each user is then allocated by the one-user path's own `allocate_exact` and
    `result_of`, reading the batch's columns in place (no per-row objects that outlive the
    user: they would only feed the garbage collector)."""
    rows = _Rows.of(batch, scores)
    failures: dict[Any, Exception] = {}
    rates = _rates(batch, rows, fx, failures)
    classes = _Classes.of(batch, rows, failures)
    table, extra = _values(batch, rows, classes, rates, failures)
    picks = _eligible(batch, scores, rows, classes, table, failures)
    missing: dict[int, list[Any]] = {}
    for i in np.flatnonzero(rows.known & ~rows.priced).tolist():
        missing.setdefault(int(rows.user[i]), []).append(rows.symbols[i])
    as_of = _oldest_per_user(batch.holdings, np.flatnonzero(rows.priced), rows.user, rows.n_users)

    users = batch.users
    bases = users["base_currency"].tolist()
    contributions = users["contribution"].tolist()
    versions = users["criteria_version"].tolist()
    results: dict[Any, UserRecommendations] = {}
    for u, user_id in enumerate(rows.user_ids):
        if user_id in failures or rows.row_of[user_id] != u:
            continue
        first, last = classes.first[u], classes.first[u + 1]
        contribution, version = contributions[u], versions[u]
        c_total = ZERO if _is_null(contribution) else contribution
        try:
            allocation = allocate_exact(
                c_total,
                minor_unit(bases[u]),
                extra[u],
                table,
                first,
                last,
                picks.weight,
                picks.symbol,
            )
            results[user_id] = result_of(
                bases[u],
                c_total,
                allocation,
                classes.specs,
                first,
                picks,
                prices_as_of=as_of[u],
                rates_as_of=fx.as_of,
                criteria_version=None if _is_null(version) else int(version),
                missing_prices=tuple(missing.get(u, ())),
            )
        except (ArithmeticError, ValueError, KeyError, TypeError) as exc:
            failures[user_id] = exc
    return results, failures


@dataclass(frozen=True)
class _Rows:
    """The batch's users and each holding row's user (-1: not in `users`)."""

    user_ids: list[Any]
    row_of: dict[Any, int]  # user id -> its (last) row in `users`
    user: np.ndarray
    known: np.ndarray
    priced: np.ndarray  # a known user's holding with a price
    symbols: np.ndarray

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @classmethod
    def of(cls, batch: Batch, scores: BatchScores) -> _Rows:
        h = batch.holdings
        user_ids = batch.users["user_id"].tolist()
        row_of = {uid: u for u, uid in enumerate(user_ids)}
        keys = scores._keys
        if keys is not None and keys.holdings is h:
            to_row = np.array([row_of.get(uid, -1) for uid in keys.users] + [-1], dtype=np.int64)
            user = to_row[keys.user_code]
        else:
            user = _run_codes(h["user_id"].to_numpy(dtype=object), row_of, grow=False)
        known = user >= 0
        priced = _present(h["price"].to_numpy(dtype=object)) & known
        return cls(user_ids, row_of, user, known, priced, h["symbol"].to_numpy(dtype=object))

    def fail(self, failures: dict[Any, Exception], u: int, error: Exception) -> None:
        """User `u` (a row of `users`) fails with `error`; its first error is kept."""
        failures.setdefault(self.user_ids[u], error)


def _rates(
    batch: Batch, rows: _Rows, fx: FxRates, failures: dict[Any, Exception]
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """The exact rate of each distinct (currency, base) pair and each holding row's pair;
    a user with a priced holding whose pair has no rate fails."""
    h = batch.holdings
    currencies: dict[Any, int] = {}  # a user's holdings often share a currency: runs
    cur_code = _run_codes(h["currency"].to_numpy(dtype=object), currencies, grow=True)
    bases = np.array(batch.users["base_currency"].tolist(), dtype=object)
    base_code, base_uniques = pd.factorize(bases, use_na_sentinel=False)
    n_b = len(base_uniques) + 1  # 0: the holding of a user missing from `users`
    pair = cur_code.astype(np.int64) * n_b
    pair[rows.known] += base_code[rows.user[rows.known]] + 1
    pairs, pair_of_row = np.unique(pair, return_inverse=True)
    pair_of_row = pair_of_row.reshape(-1)
    cur_values, base_values = list(currencies), [None, *base_uniques.tolist()]
    rates: list[tuple[int, int]] = []
    for p, key in enumerate(pairs.tolist()):
        cur, base = divmod(key, n_b)
        try:
            rates.append(fx.ratio(cur_values[cur], base_values[base]))
        except MissingRateError as exc:
            rates.append((0, 1))
            for i in np.flatnonzero(rows.priced & (pair_of_row == p)).tolist():
                rows.fail(failures, int(rows.user[i]), exc)
    return rates, pair_of_row


@dataclass(frozen=True)
class _Classes:
    """The class rows of the batch's users, grouped by user in each user's order, and the
    class row of each holding (-1: a class its user does not have)."""

    specs: list[ClassSpec]
    user: np.ndarray
    first: list[int]  # user u's rows are first[u] to first[u + 1]
    of_holding: np.ndarray

    @classmethod
    def of(cls, batch: Batch, rows: _Rows, failures: dict[Any, Exception]) -> _Classes:
        cl, h = batch.classes, batch.holdings
        c_user = _run_codes(cl["user_id"].to_numpy(dtype=object), rows.row_of, grow=False)
        c_rows = np.flatnonzero(c_user >= 0)
        c_rows = c_rows[np.argsort(c_user[c_rows], kind="stable")]
        c_user = c_user[c_rows]
        first = np.searchsorted(c_user, np.arange(rows.n_users + 1)).tolist()
        specs = _class_specs(cl, c_rows)
        n_k = len(specs)
        codes, _ = pd.factorize(
            np.concatenate(
                [cl["name"].to_numpy(dtype=object)[c_rows], h["asset_class"].to_numpy(dtype=object)]
            ),
            use_na_sentinel=False,
        )
        n_names = int(codes.max()) + 1 if len(codes) else 1
        key = c_user * n_names + codes[:n_k]
        by_key = np.argsort(key, kind="stable")
        sorted_key = key[by_key]
        for u in set(c_user[by_key[1:][sorted_key[1:] == sorted_key[:-1]]].tolist()):
            try:
                check_unique(specs[first[u] : first[u + 1]], ())
            except ValueError as exc:  # a class name twice
                rows.fail(failures, u, exc)
        of_holding = np.full(len(h), -1, dtype=np.int64)
        if n_k:
            h_key = rows.user * n_names + codes[n_k:]
            pos = np.minimum(np.searchsorted(sorted_key, h_key), n_k - 1)
            found = rows.known & (sorted_key[pos] == h_key)
            of_holding[found] = by_key[pos[found]]
        return cls(specs, c_user, first, of_holding)


def _values(
    batch: Batch,
    rows: _Rows,
    classes: _Classes,
    rates: tuple[list[tuple[int, int]], np.ndarray],
    failures: dict[Any, Exception],
) -> tuple[ClassTable, list[tuple[int, int]]]:
    """Step 1, exactly: a class table with each class row's value and band as integer
    ratios, and each user's value in classes it does not have. `quantity × price` is
    summed per (class row, currency) without rounding, then turned into base currency by
    the pair's exact rate. A user whose numbers are not finite decimals fails."""
    h = batch.holdings
    quantity, price = h["quantity"].to_numpy(dtype=object), h["price"].to_numpy(dtype=object)
    ratio, pair_of_row = rates
    ok = rows.priced & ~_failed(rows, failures)[np.maximum(rows.user, 0)]
    checked = np.flatnonzero(ok)
    for column, values in (("quantity", quantity), ("price", price)):
        for i in checked[~_finite(values[checked])].tolist():
            error = ValueError(
                f"holding {rows.symbols[i]!r}: {column} {values[i]!r} is not a finite decimal"
            )
            rows.fail(failures, int(rows.user[i]), error)
    ok &= ~_failed(rows, failures)[np.maximum(rows.user, 0)]
    n_k = len(classes.specs)
    n_pairs = max(len(ratio), 1)
    v_rows = np.flatnonzero(ok)
    k = classes.of_holding[v_rows]
    group = np.where(k >= 0, k, n_k + rows.user[v_rows]) * n_pairs + pair_of_row[v_rows]
    by_group = np.argsort(group, kind="stable")
    v_rows, group = v_rows[by_group], group[by_group]
    heads = _heads(group)
    with localcontext(EXACT):
        products = quantity[v_rows] * price[v_rows]
        sums = np.add.reduceat(products, heads).tolist() if len(heads) else []
    table = ClassTable(value_num=[0] * n_k, value_den=[1] * n_k)
    extra = [(0, 1)] * rows.n_users
    for (row, p), amount in zip(
        map(divmod, group[heads].tolist(), repeat(n_pairs)), sums, strict=True
    ):
        if row < n_k:
            acc = add_ratio((table.value_num[row], table.value_den[row]), amount, *ratio[p])
            table.value_num[row], table.value_den[row] = acc
        else:
            extra[row - n_k] = add_ratio(extra[row - n_k], amount, *ratio[p])
    columns = {
        "target_min": [c.target_min for c in classes.specs],
        "target_max": [c.target_max for c in classes.specs],
        "min_allocation_value": [c.min_allocation_value or ZERO for c in classes.specs],
    }
    for name, bounds in columns.items():
        for row in np.flatnonzero(~_finite(np.array(bounds, dtype=object))).tolist():
            spec = classes.specs[row]
            error = ValueError(
                f"asset class {spec.name!r}: {name} {bounds[row]!r} is not a finite decimal"
            )
            rows.fail(failures, int(classes.user[row]), error)
            bounds[row] = ZERO
    as_ratio = _ratios()
    table.lo_num, table.lo_den = _unzip(map(as_ratio, columns["target_min"]), n_k)
    table.hi_num, table.hi_den = _unzip(map(as_ratio, columns["target_max"]), n_k)
    table.min_num, table.min_den = _unzip(map(as_ratio, columns["min_allocation_value"]), n_k)
    return table, extra


def _eligible(
    batch: Batch,
    scores: BatchScores,
    rows: _Rows,
    classes: _Classes,
    table: ClassTable,
    failures: dict[Any, Exception],
) -> Picks:
    """Step 3: each class row's eligible assets (priced, score > 0) by score desc, symbol
    and holding order, the first `max_assets` of them, as pick columns; sets the table's
    pick ranges. A user holding an eligible asset twice fails."""
    h = batch.holdings
    points = scores.holdings["score_points"].to_numpy()
    of_k = classes.of_holding
    ok = rows.priced & ~_failed(rows, failures)[np.maximum(rows.user, 0)]
    e_rows = np.flatnonzero(ok & (points > 0) & (of_k >= 0))
    sym_rank, _ = pd.factorize(rows.symbols[e_rows], sort=True)
    e_rows = e_rows[np.lexsort((sym_rank, -points[e_rows], of_k[e_rows]))]
    e_k = of_k[e_rows]
    max_assets = np.array([s.max_assets or 0 for s in classes.specs], dtype=np.int64)
    if len(e_rows):
        nth = np.arange(len(e_rows)) - np.searchsorted(e_k, e_k)
        e_rows = e_rows[(max_assets[e_k] == 0) | (nth < max_assets[e_k])]
        e_k = of_k[e_rows]
    n_k = len(classes.specs)
    table.pick_start = np.searchsorted(e_k, np.arange(n_k)).tolist()
    table.pick_end = np.searchsorted(e_k, np.arange(n_k), "right").tolist()
    sh = scores.holdings
    asset_ids = h["asset_id"].to_numpy(dtype=object)[e_rows]
    picks = Picks(
        asset_ids.tolist(),
        rows.symbols[e_rows].tolist(),
        sh["score"].to_numpy(dtype=object)[e_rows].tolist(),
        sh["criteria_count"].to_numpy()[e_rows].tolist(),
        sh["top_contributor"].to_numpy(dtype=object)[e_rows].tolist(),
        points[e_rows].tolist(),
    )
    asset_code, _ = pd.factorize(asset_ids)
    span = int(asset_code.max()) + 1 if len(asset_code) else 1
    pair = np.sort(classes.user[e_k] * span + asset_code)
    for u in set((pair[1:][pair[1:] == pair[:-1]] // span).tolist()):
        first, last = classes.first[u], classes.first[u + 1]
        try:
            check_unique((), picks.asset_id[table.pick_start[first] : table.pick_end[last - 1]])
        except ValueError as exc:  # an asset twice
            rows.fail(failures, u, exc)
    return picks


def _failed(rows: _Rows, failures: dict[Any, Exception]) -> np.ndarray:
    """Per row of `users`: whether that user has failed."""
    out = np.zeros(rows.n_users, dtype=bool)
    for uid in failures:
        u = rows.row_of.get(uid)
        if u is not None:
            out[u] = True
    return out


def _finite(values: np.ndarray) -> np.ndarray:
    """Whether each value is an int or a finite Decimal."""
    listed = values.tolist()
    if set(map(type, listed)) <= {Decimal}:
        return np.fromiter(map(Decimal.is_finite, listed), dtype=bool, count=len(listed))
    return np.fromiter(map(_is_finite, listed), dtype=bool, count=len(listed))


def _unzip(pairs: Iterable[tuple[int, int]], n: int) -> tuple[list[int], list[int]]:
    firsts, seconds = [0] * n, [1] * n
    for i, (a, b) in enumerate(pairs):
        firsts[i], seconds[i] = a, b
    return firsts, seconds


def _is_finite(value: object) -> bool:
    return type(value) is int or (type(value) is Decimal and value.is_finite())


def _ratios() -> Callable[[Decimal], tuple[int, int]]:
    """Decimal.as_integer_ratio, remembered per value (a batch's bands repeat)."""
    seen: dict[Decimal, tuple[int, int]] = {}

    def ratio(d: Decimal) -> tuple[int, int]:
        got = seen.get(d)
        if got is None:
            got = seen[d] = d.as_integer_ratio()
        return got

    return ratio


def _heads(sorted_keys: np.ndarray) -> np.ndarray:
    """Where each run of equal keys starts."""
    if not len(sorted_keys):
        return np.empty(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def _oldest_per_user(
    h: pd.DataFrame, rows: np.ndarray, h_user: np.ndarray, n_users: int
) -> list[Any]:
    """The oldest `price_as_of` of each user's priced rows (None when none has one)."""
    out: list[Any] = [None] * n_users
    if "price_as_of" not in h or not len(rows):
        return out
    stamps = h["price_as_of"].to_numpy(dtype=object)[rows].tolist()
    for u, t in zip(h_user[rows].tolist(), stamps, strict=True):
        if t is not None and t == t and (out[u] is None or t < out[u]):  # t == t: not NaT
            out[u] = t
    return out


def _present(values: np.ndarray) -> np.ndarray:
    """Not null, as pandas' notna says (None, NaN); fast for a column of Decimal and None."""
    listed = values.tolist()
    if set(map(type, listed)) <= {Decimal, type(None)}:
        return np.fromiter((v is not None for v in listed), dtype=bool, count=len(listed))
    return ~pd.isna(values)


def _is_null(value: object) -> bool:
    return value is None or (isinstance(value, float) and np.isnan(value))


def _class_specs(classes: pd.DataFrame, rows: np.ndarray) -> list[ClassSpec]:
    """The class rows `rows` as `ClassSpec`s."""

    def column(name: str) -> list[Any]:
        listed: list[Any] = classes[name].to_numpy(dtype=object)[rows].tolist()
        return listed

    max_assets = [None if _is_null(v) else int(v) for v in column("max_assets")]
    minimum = [None if _is_null(v) else v for v in column("min_allocation_value")]
    fields = (column("name"), column("target_min"), column("target_max"), max_assets, minimum)
    return list(map(tuple.__new__, repeat(ClassSpec), zip(*fields, strict=True)))
