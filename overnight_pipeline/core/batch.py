"""Scoring and recommendations for a whole batch of users at once.

The row-heavy work (every holding against every rule of its class, valuation, eligibility
and ordering) is vectorised with numpy/pandas; what is final money goes through the same
Decimal code as the one-user path (`recommendations.allocate`), so both give identical
results. Rule comparisons run on floats and fall back to Decimal wherever the floats are
equal, which keeps them exact: float(Decimal) is monotonic, so unequal floats order their
Decimals the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal
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

HOLDING_COLUMNS = ("user_id", "asset_id", "symbol", "asset_class", "quantity", "currency",
                   "price", "price_as_of")  # fmt: skip
RULE_COLUMNS = ("user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points")
CLASS_COLUMNS = ("user_id", "name", "target_min", "target_max", "max_assets",
                 "min_allocation_value")  # fmt: skip
USER_COLUMNS = ("user_id", "base_currency", "contribution", "criteria_version")

ONE = Decimal(1)
_OPS = ("exists", "gt", "lt", "gte", "lte", "equals", "between")
_METRIC_INDEX = {m: i for i, m in enumerate(METRICS)}


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
class BatchScores:
    """Scores per holding row of the batch, and the breakdown per (holding, rule)."""

    holdings: pd.DataFrame  # user_id, asset_id, asset_class, score, score_points,
    # max_possible_score, criteria_count, top_contributor (aligned with Batch.holdings)
    breakdown: pd.DataFrame  # holding (row of `holdings`), criterion_id, metric, matched,
    # points_awarded, actual_value, skipped_reason; rows grouped by holding, rules in order

    def asset_scores(self) -> dict[Any, dict[str, AssetScore]]:
        """Full `AssetScore` objects per user (for tests, replays and small batches)."""
        b = self.breakdown
        outcomes: list[list[RuleOutcome]] = [[] for _ in range(len(self.holdings))]
        for h, cid, metric, matched, points, actual, skipped in zip(
            b["holding"].tolist(), b["criterion_id"].tolist(), b["metric"].tolist(),
            b["matched"].tolist(), b["points_awarded"].tolist(), b["actual_value"].tolist(),
            b["skipped_reason"].tolist(), strict=True,
        ):  # fmt: skip
            outcomes[h].append(RuleOutcome(cid, metric, matched, points, actual, skipped))
        result: dict[Any, dict[str, AssetScore]] = {}
        s = self.holdings
        for i, (user_id, asset_id, score, max_score, top) in enumerate(zip(
            s["user_id"].tolist(), s["asset_id"].tolist(), s["score"].tolist(),
            s["max_possible_score"].tolist(), s["top_contributor"].tolist(), strict=True,
        )):  # fmt: skip
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
    """Score every holding of the batch and recommend for every user."""
    scores = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recs, failures = recommend_batch(batch, scores, fx)
    return BatchResult(scores, recs, failures)


def _decimal_cache(values: np.ndarray) -> np.ndarray:
    """Decimal(v) quantized to 4 places for integer points, computed once per distinct value."""
    uniques, inverse = np.unique(values, return_inverse=True)
    table = np.array([Decimal(int(v)).quantize(SCORE_PLACES) for v in uniques], dtype=object)
    return table[inverse.reshape(-1)]


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


def score_batch(
    holdings: pd.DataFrame, rules: pd.DataFrame, fundamentals: pd.DataFrame | FundamentalsTable
) -> BatchScores:
    """SPEC §2 for every holding row against its user's rules for the holding's class."""
    n = len(holdings)
    # One integer key per (user, class), shared by holdings and rules.
    users_codes, _ = pd.factorize(
        pd.concat([holdings["user_id"], rules["user_id"]], ignore_index=True)
    )
    class_codes, class_uniques = pd.factorize(
        pd.concat([holdings["asset_class"], rules["asset_class"]], ignore_index=True)
    )
    keys = users_codes.astype(np.int64) * max(len(class_uniques), 1) + class_codes
    h_key, r_key = keys[:n], keys[n:]

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
    f_obj, f_float = table.exact, table.approx
    a_row = table.index.get_indexer(pd.Index(holdings["asset_id"]))
    a_row = np.where(a_row < 0, len(table.index), a_row)

    metric_code = rules["metric"].map(_METRIC_INDEX).to_numpy(dtype=np.int64)
    op_code = rules["operator"].map({op: i for i, op in enumerate(_OPS)}).to_numpy(dtype=np.int8)
    points = rules["points"].to_numpy(dtype=np.int64)
    v1_obj = rules["value"].to_numpy(dtype=object)
    v2_obj = rules["value2"].to_numpy(dtype=object)

    rows_a = a_row[h_idx]
    rows_m = metric_code[r_idx]
    actual = f_float[rows_a, rows_m]
    null = np.isnan(actual)
    op = op_code[r_idx]
    cmp1 = _compare(actual, null, _to_float(v1_obj)[r_idx], f_obj, rows_a, rows_m, v1_obj, r_idx)
    cmp2 = _compare(actual, null, _to_float(v2_obj)[r_idx], f_obj, rows_a, rows_m, v2_obj, r_idx,
                    only=op == _OPS.index("between"))  # fmt: skip
    matched = np.select(
        [op == 0, op == 1, op == 2, op == 3, op == 4, op == 5, op == 6],
        [~null, cmp1 > 0, cmp1 < 0, cmp1 >= 0, cmp1 <= 0, cmp1 == 0, (cmp1 >= 0) & (cmp2 <= 0)],
        default=False,
    )
    skipped = null & (op != 0)
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
        metrics = np.array(METRICS, dtype=object)
        top[h_idx[first]] = metrics[metric_code[r_idx[first]]]

    scored = pd.DataFrame({
        "user_id": holdings["user_id"].to_numpy(),
        "asset_id": holdings["asset_id"].to_numpy(),
        "asset_class": holdings["asset_class"].to_numpy(),
        "score": _decimal_cache(score_points),
        "score_points": score_points,
        "max_possible_score": _decimal_cache(max_points.round().astype(np.int64)),
        "criteria_count": counts,
        "top_contributor": _objects(top),
    })  # fmt: skip
    actual_obj = f_obj[rows_a, rows_m]
    actual_obj[skipped] = None
    reason = np.full(len(h_idx), None, dtype=object)
    reason[skipped] = MISSING_FUNDAMENTAL
    breakdown = pd.DataFrame({
        "holding": h_idx,
        "criterion_id": _objects(rules["id"].to_numpy(dtype=object)[r_idx]),
        "metric": _objects(np.array(METRICS, dtype=object)[rows_m]),
        "matched": matched,
        "points_awarded": awarded,
        "actual_value": _objects(actual_obj),
        "skipped_reason": _objects(reason),
    })  # fmt: skip
    return BatchScores(scored, breakdown)


def _objects(values: np.ndarray) -> pd.Series:
    # Object dtype on purpose: pandas would turn str/None columns into str with NaN.
    return pd.Series(values, dtype=object, copy=False)


def _to_float(values: np.ndarray) -> np.ndarray:
    """Floats of an object array of Decimal/None (None → NaN)."""
    flat = values.ravel()
    out = np.fromiter((np.nan if v is None else float(v) for v in flat), np.float64, len(flat))
    return out.reshape(values.shape)


def _compare(
    actual: np.ndarray,
    null: np.ndarray,
    value: np.ndarray,
    f_obj: np.ndarray,
    rows_a: np.ndarray,
    rows_m: np.ndarray,
    value_obj: np.ndarray,
    r_idx: np.ndarray,
    only: np.ndarray | None = None,
) -> np.ndarray:
    """Exact sign of (actual − value) per row: floats first, Decimals where floats tie."""
    cmp = (actual > value).astype(np.int8) - (actual < value).astype(np.int8)
    tie = (actual == value) & ~null
    if only is not None:
        tie &= only
    for i in np.flatnonzero(tie):
        a: Decimal = f_obj[rows_a[i], rows_m[i]]
        v: Decimal = value_obj[r_idx[i]]
        cmp[i] = (a > v) - (a < v)
    return cmp


def recommend_batch(
    batch: Batch, scores: BatchScores, fx: FxRates, *, vectorised: bool = True
) -> tuple[dict[Any, UserRecommendations], dict[Any, Exception]]:
    """SPEC §3 for every user of the batch; a user whose data fails (e.g. a missing rate)
    is reported in the second dict and the others carry on.

    Users are allocated all at once on arrays (`_allocate_many`) with the same Decimal
    operations as `allocate`; a user who needs one of its rare iterative branches (an asset
    or a class below its minimum, a rounding unit refused by a cap, ...) goes through
    `allocate` itself. `vectorised=False` sends every user through `allocate`.
    """
    users = batch.users
    h = batch.holdings
    n = len(h)
    user_list = users["user_id"].tolist()
    base_list = users["base_currency"].tolist()
    n_users = len(user_list)
    row_of = {uid: u for u, uid in enumerate(user_list)}  # the last row of a repeated id
    h_user_ids = h["user_id"].to_numpy(dtype=object)
    h_user = _lookup(h_user_ids, row_of)

    # 1. Values in the base currency, one rate per distinct (currency, base) pair.
    price = h["price"].to_numpy(dtype=object)
    priced = ~pd.isna(price)
    cur_code, cur_uniques = pd.factorize(h["currency"].to_numpy(dtype=object),
                                         use_na_sentinel=False)  # fmt: skip
    base_code, base_uniques = pd.factorize(np.array(base_list, dtype=object),
                                           use_na_sentinel=False)  # fmt: skip
    n_b = len(base_uniques) + 1  # code 0: a holding of a user missing from `users`
    row_base = np.zeros(n, dtype=np.int64)
    known = h_user >= 0
    row_base[known] = base_code[h_user[known]] + 1
    pairs, pair_of_row = np.unique(cur_code * n_b + row_base, return_inverse=True)
    base_values = [np.nan, *base_uniques.tolist()]
    cur_values = cur_uniques.tolist()
    rates = np.empty(len(pairs), dtype=object)
    bad_pair = np.zeros(len(pairs), dtype=bool)
    one_pair = np.zeros(len(pairs), dtype=bool)
    for j, key in enumerate(pairs.tolist()):
        try:
            r = fx.rate(cur_values[key // n_b], base_values[key % n_b])
        except MissingRateError as exc:
            rates[j], bad_pair[j] = exc, True
        else:
            # x * Decimal(1) is x itself (same digits, same exponent): skip it.
            rates[j], one_pair[j] = r, r.as_tuple() == (0, (1,), 0)
    pair_of_row = pair_of_row.reshape(-1)
    bad = bad_pair[pair_of_row] & priced
    failures: dict[Any, Exception] = {}
    for i in np.flatnonzero(bad).tolist():
        failures.setdefault(h_user_ids[i], rates[pair_of_row[i]])
    ok = priced & ~bad
    value = np.full(n, None, dtype=object)
    ok_rows = np.flatnonzero(ok)
    v = h["quantity"].to_numpy(dtype=object)[ok_rows] * price[ok_rows]
    times = ~one_pair[pair_of_row[ok_rows]]
    if times.any():
        v[times] = v[times] * rates[pair_of_row[ok_rows[times]]]
    value[ok_rows] = v

    score_points = scores.holdings["score_points"].to_numpy()
    failed = np.zeros(n_users, dtype=bool)
    failed[h_user[bad & known]] = True
    if len(row_of) != n_users:  # a repeated user id: every row through `allocate`, as ever
        vectorised = False
    fast: dict[int, UserRecommendations] = {}
    scalar = ~failed
    if vectorised:
        try:
            fast = _allocate_many(batch, scores, fx, row_of, h_user, value, ok, ~failed)
        except (ArithmeticError, ValueError, KeyError):
            fast = {}  # the users' own errors are reported one by one below
        scalar = ~failed
        scalar[list(fast)] = False
    slow = _allocate_each(batch, scores, fx, h_user, value, ok, score_points, scalar, failures)
    results: dict[Any, UserRecommendations] = {}
    for u, user_id in enumerate(user_list):
        r = fast.get(u) or slow.get(u)
        if r is not None and user_id not in failures:
            results[user_id] = r
    return results, failures


def _allocate_each(
    batch: Batch,
    scores: BatchScores,
    fx: FxRates,
    h_user: np.ndarray,
    value: np.ndarray,
    ok: np.ndarray,
    score_points: np.ndarray,
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
    in_sel = np.zeros(len(h), dtype=bool)
    in_sel[h_user >= 0] = selected[h_user[h_user >= 0]]
    rows = np.flatnonzero(in_sel)
    rows = rows[np.argsort(h_user[rows], kind="stable")]
    h_bounds = _groups(h_user[rows], len(users))
    elig = rows[ok[rows] & (score_points[rows] > 0)]
    symbol_rank, _ = pd.factorize(h["symbol"].to_numpy(dtype=object)[elig], sort=True)
    class_code, _ = pd.factorize(h["asset_class"].to_numpy(dtype=object)[elig])
    order = np.lexsort((symbol_rank, -score_points[elig], class_code, h_user[elig]))
    elig = elig[order]
    e_bounds = _groups(h_user[elig], len(users))
    asset_ids = h["asset_id"].tolist()
    symbols = h["symbol"].tolist()
    classes_of = h["asset_class"].tolist()
    score_col = scores.holdings["score"].tolist()
    count_col = scores.holdings["criteria_count"].tolist()
    top_col = scores.holdings["top_contributor"].tolist()
    value_l = value.tolist()
    ok_l = ok.tolist()
    price_as_of = h["price_as_of"].tolist() if "price_as_of" in h else [None] * len(h)
    rows_l, elig_l = rows.tolist(), elig.tolist()
    user_list = users["user_id"].tolist()
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
        for i in rows_l[slice(*h_bounds[u])]:
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
    row_of: Mapping[Any, int],
    h_user: np.ndarray,
    value: np.ndarray,
    ok: np.ndarray,
    candidate: np.ndarray,
) -> dict[int, UserRecommendations]:
    """`allocate` for many users at once, by row of `batch.users`, for the users whose
    allocation takes no rare branch; the others are left out (for `allocate` itself).

    Every Decimal that reaches the output is made by the same operations, on the same
    operands and in the same order, as `allocate` makes it, so it is the same Decimal (digits
    and exponent). Decimals that only steer decisions are computed to the same value (the
    result of a Decimal operation depends only on the values of its operands), sometimes
    without a neutral `ZERO +`.
    """
    users = batch.users
    h = batch.holdings
    cl = batch.classes
    n_users = len(users)
    points = scores.holdings["score_points"].to_numpy()

    # --- Which user takes which class rows; users the arrays cannot take. ------------------
    c_user = _lookup(cl["user_id"].to_numpy(dtype=object), row_of)
    usable = candidate.copy()
    max_raw = cl["max_assets"].to_numpy(dtype=object)
    min_raw = cl["min_allocation_value"].to_numpy(dtype=object)
    # Nulls must be exactly what `_is_null` calls null (None or a float NaN).
    for raw in (max_raw, min_raw):
        odd = pd.isna(raw) & ~np.fromiter((v is None or isinstance(v, float) for v in raw),
                                          dtype=bool, count=len(raw))  # fmt: skip
        usable[c_user[odd & (c_user >= 0)]] = False
    has_class = np.zeros(n_users, dtype=bool)
    has_class[c_user[c_user >= 0]] = True
    usable &= has_class
    names_raw = cl["name"].to_numpy(dtype=object)
    h_class_raw = h["asset_class"].to_numpy(dtype=object)
    name_code, name_uniques = pd.factorize(np.concatenate([names_raw, h_class_raw]), sort=True,
                                           use_na_sentinel=False)  # fmt: skip
    c_name, h_name = name_code[: len(cl)], name_code[len(cl) :]
    n_names = max(len(name_uniques), 1)
    # Class rows by user, each user's order; a class name twice for one user: not here.
    key = np.where(c_user >= 0, c_user * n_names + c_name, -1)
    srt = np.argsort(key, kind="stable")
    skey = key[srt]
    dup = (skey[1:] == skey[:-1]) & (skey[1:] >= 0)
    usable[c_user[srt[1:][dup]]] = False
    # A priced holding of a class the user does not have: not here either.
    pos = np.searchsorted(skey, h_user * n_names + h_name)
    pos = np.minimum(pos, max(len(skey) - 1, 0))
    found = (h_user >= 0) & (len(skey) > 0)
    if len(skey):
        found &= skey[pos] == h_user * n_names + h_name
    h_crow = np.where(found, srt[pos] if len(skey) else -1, -1)  # row of `classes`, or -1
    stray = ok & ~found & (h_user >= 0)
    usable[h_user[stray]] = False
    max_null = pd.isna(max_raw)
    max_assets = np.zeros(len(cl), dtype=np.int64)
    max_assets[~max_null] = np.fromiter(map(int, max_raw[~max_null]), dtype=np.int64,
                                        count=int((~max_null).sum()))  # fmt: skip
    neg = (max_assets < 0) & (c_user >= 0)
    usable[c_user[neg]] = False

    # --- Compact arrays: users U, class rows K (by user, in order), eligible picks E. ------
    f_of_u = np.cumsum(usable) - 1
    users_f = np.flatnonzero(usable)
    n_f = len(users_f)
    if n_f == 0:
        return {}
    c_rows = np.flatnonzero((c_user >= 0) & usable[np.maximum(c_user, 0)])
    c_rows = c_rows[np.argsort(c_user[c_rows], kind="stable")]
    n_k = len(c_rows)
    k_of_crow = np.full(len(cl) + 1, -1, dtype=np.int64)
    k_of_crow[c_rows] = np.arange(n_k)
    k_user = f_of_u[c_user[c_rows]]
    k_first = np.searchsorted(k_user, np.arange(n_f))
    h_k = k_of_crow[h_crow]  # -1 for rows outside K (h_crow = -1 indexes the sentinel)
    names = names_raw[c_rows]
    name_rank = c_name[c_rows]
    t_min = cl["target_min"].to_numpy(dtype=object)[c_rows]
    t_max = cl["target_max"].to_numpy(dtype=object)[c_rows]
    k_max = max_assets[c_rows]
    min_val = min_raw[c_rows]
    min_set = ~pd.isna(min_val)
    min_set[min_set] = min_val[min_set] != 0

    # Step 1 sums: each class's value, in holding order, from ZERO.
    v_rows = np.flatnonzero(ok & (h_k >= 0))
    v_rows = v_rows[np.argsort(h_k[v_rows], kind="stable")]
    cv = _sums(value[v_rows], h_k[v_rows], n_k, ZERO)
    total = _sums(cv, k_user, n_f, ZERO)

    # Step 3: eligible picks by class, score desc, symbol, holding order; first max_assets.
    e_rows = np.flatnonzero(ok & (h_k >= 0) & (points > 0))
    symbols_raw = h["symbol"].to_numpy(dtype=object)
    sym_rank, _ = pd.factorize(symbols_raw[e_rows], sort=True)
    e_pts = points[e_rows]
    order = np.lexsort((e_rows, sym_rank, -e_pts, h_k[e_rows]))
    e_rows, sym_rank, e_pts = e_rows[order], sym_rank[order], e_pts[order]
    e_k = h_k[e_rows]
    e_first = np.searchsorted(e_k, np.arange(n_k))
    e_pos = np.arange(len(e_rows)) - e_first[e_k]
    kept = (k_max[e_k] == 0) | (e_pos < k_max[e_k])
    e_rows, sym_rank, e_pts, e_k = e_rows[kept], sym_rank[kept], e_pts[kept], e_k[kept]
    n_picks = np.bincount(e_k, minlength=n_k)
    active = n_picks > 0
    asset_raw = h["asset_id"].to_numpy(dtype=object)
    # The same asset twice among a user's picks would collide in `allocate`'s dicts.
    e_user = k_user[e_k]
    e_hash = np.fromiter(map(hash, asset_raw[e_rows]), dtype=np.int64, count=len(e_rows))
    hs = np.lexsort((e_hash, e_user))
    same = (e_user[hs][1:] == e_user[hs][:-1]) & (e_hash[hs][1:] == e_hash[hs][:-1])
    drop_f = np.zeros(n_f, dtype=bool)
    drop_f[e_user[hs][1:][same]] = True

    # --- Step 2: targets after the contribution, gaps before it. ---------------------------
    contributions = users["contribution"].to_numpy(dtype=object)[users_f]
    c_total = _objects_of([ZERO if _is_null(c) else c for c in contributions.tolist()])
    after = total + c_total
    t_mid = (t_min + t_max) / 2
    pct = np.full(n_k, ZERO, dtype=object)
    share_of = (total > ZERO)[k_user]
    pct[share_of] = HUNDRED * cv[share_of] / total[k_user[share_of]]
    gap = t_mid - pct

    # --- Step 4: water-filling over the active classes of users with money. ----------------
    money_f = c_total > ZERO
    a_rows = np.flatnonzero(active & money_f[k_user])
    a_user = k_user[a_rows]
    amount = np.full(n_k, ZERO, dtype=object)
    leftover = np.full(n_f, ZERO, dtype=object)  # max(C, 0) when nothing is filled
    leftover[money_f] = c_total[money_f]
    hi = np.full(n_k, ZERO, dtype=object)
    if len(a_rows):
        a_after = after[a_user]
        mid_a = t_mid[a_rows] / HUNDRED * a_after
        hi_a = t_max[a_rows] / HUNDRED * a_after
        hi[a_rows] = hi_a
        fu, a_grp = np.unique(a_user, return_inverse=True)
        a_grp = a_grp.reshape(-1)
        cv_a = cv[a_rows]
        got1, rest1 = _fill_many(c_total[fu], a_grp, cv_a, mid_a, name_rank[a_rows], len(fu))
        got = got1
        rest = rest1
        more = rest1 > ZERO
        if more.any():
            rows2 = np.flatnonzero(more[a_grp])
            g2, grp2 = np.unique(a_grp[rows2], return_inverse=True)
            got2, rest2 = _fill_many(rest1[g2], grp2.reshape(-1), cv_a[rows2] + got1[rows2],
                                     hi_a[rows2], name_rank[a_rows[rows2]], len(g2))  # fmt: skip
            got = got1.copy()
            got[rows2] = got1[rows2] + got2
            rest = rest1.copy()
            rest[g2] = rest2
        amount[a_rows] = got
        leftover[fu] = rest
        # A class whose amount is below its minimum is dropped and filling redone: not here.
        short = min_set[a_rows] & (got > ZERO)
        short[short] = got[short] < min_val[a_rows[short]]
        drop_f[a_user[short]] = True

    # --- Step 5: split by score in the classes that receive money. -------------------------
    paid = amount > ZERO
    p_sel = paid[e_k]
    p_rows, p_k, p_pts, p_sym = e_rows[p_sel], e_k[p_sel], e_pts[p_sel], sym_rank[p_sel]
    p_user = k_user[p_k]
    score_obj = scores.holdings["score"].to_numpy(dtype=object)
    p_score = score_obj[p_rows]
    score_sum = _sums(p_score, p_k, n_k, None)
    share = amount[p_k] * p_score / score_sum[p_k]
    low = min_set[p_k]
    low[low] = share[low] < min_val[p_k[low]]
    drop_f[p_user[low]] = True  # an asset below the class minimum: re-split, not here

    # --- Step 6: largest remainder to the minor unit. --------------------------------------
    bases_f = users["base_currency"].to_numpy(dtype=object)[users_f]
    quanta = {b: quantum(b) for b in set(bases_f.tolist())}
    q_f = np.array([quanta[b] for b in bases_f.tolist()], dtype=object)
    floor = _QUANTIZE(share, q_f[p_user], ROUND_DOWN)
    rem = share - floor
    to_spend = _QUANTIZE(c_total - leftover, q_f, ROUND_DOWN)
    floor_sum = _sums(floor, p_user, n_f, None)
    units = np.fromiter(map(int, (to_spend - floor_sum) / q_f), dtype=np.int64, count=n_f)
    has_rem = rem > ZERO
    n_rem = np.bincount(p_user[has_rem], minlength=n_f)
    drop_f |= units > n_rem  # a unit would go to an asset with nothing to round up
    plus = has_rem & (units[p_user] >= n_rem[p_user])
    pick = has_rem & (units[p_user] > 0) & (units[p_user] < n_rem[p_user])
    if pick.any():
        idx = np.flatnonzero(pick)
        rank = _ranks(p_user[idx], [(rem[idx], True), (p_pts[idx], True), (p_sym[idx], False)])
        plus[idx] = rank < units[p_user[idx]]
    # Never past a class's cap: refused units mean another order of events, not here.
    if plus.any():
        k_plus = np.unique(p_k[plus])
        n_plus = np.bincount(p_k[plus], minlength=n_k)[k_plus]
        floor_k = _sums(floor, p_k, n_k, None)[k_plus]
        final = floor_k + np.array([q_f[k_user[k]] * m for k, m in
                                    zip(k_plus.tolist(), n_plus.tolist(), strict=True)],
                                   dtype=object)  # fmt: skip
        over = final > hi[k_plus] - cv[k_plus]
        drop_f[k_user[k_plus[over]]] = True
    p_amount = floor.copy()
    p_amount[plus] = floor[plus] + q_f[p_user[plus]]

    # --- Step 7: output. -------------------------------------------------------------------
    r_sel = np.flatnonzero(p_amount > ZERO)
    r_k, r_user = p_k[r_sel], p_user[r_sel]
    r_amount = p_amount[r_sel]
    class_amount = _sums(r_amount, r_k, n_k, ZERO)
    allocated = _sums(class_amount, k_user, n_f, ZERO)
    unallocated = c_total - allocated
    rec_rank = _ranks(r_user, [(r_amount, True), (p_pts[r_sel], True), (p_sym[r_sel], False)])
    r_first = np.searchsorted(r_user, np.arange(n_f))
    r_order = np.empty(len(r_sel), dtype=np.int64)
    r_order[r_first[r_user] + rec_rank] = np.arange(len(r_sel))
    r_sel, r_k, r_amount = r_sel[r_order], r_k[r_order], r_amount[r_order]
    gap_k = np.unique(r_k)
    gap_q = np.full(n_k, None, dtype=object)
    gap_q[gap_k] = _QUANTIZE(gap[gap_k], PERCENT_PLACES, ROUND_HALF_EVEN)
    rr = p_rows[r_sel]
    recs = list(map(RecommendedAsset._make, zip(
        asset_raw[rr].tolist(), symbols_raw[rr].tolist(), names[r_k].tolist(),
        score_obj[rr].tolist(), r_amount.tolist(), bases_f[k_user[r_k]].tolist(),
        gap_q[r_k].tolist(), scores.holdings["criteria_count"].to_numpy()[rr].tolist(),
        scores.holdings["top_contributor"].to_numpy(dtype=object)[rr].tolist(), strict=True,
    )))  # fmt: skip
    status = np.where(active, None, NO_ELIGIBLE_ASSET)
    class_results = list(map(ClassResult._make, zip(
        names.tolist(), cv.tolist(), pct.tolist(), t_min.tolist(), t_max.tolist(),
        gap.tolist(), class_amount.tolist(), status.tolist(), strict=True,
    )))  # fmt: skip

    # Freshness and missing prices per user.
    in_f = (h_user >= 0) & usable[np.maximum(h_user, 0)]
    missing: dict[int, list[str]] = {}
    for i in np.flatnonzero(in_f & ~ok).tolist():
        missing.setdefault(int(f_of_u[h_user[i]]), []).append(symbols_raw[i])
    as_of = np.full(n_f, None, dtype=object)
    if "price_as_of" in h:
        pao = h["price_as_of"].to_numpy(dtype=object)
        rows = np.flatnonzero(in_f & ok & np.not_equal(pao, None))
        rows = rows[np.argsort(h_user[rows], kind="stable")]
        if len(rows):
            g = f_of_u[h_user[rows]]
            heads = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            as_of[g[heads]] = np.minimum.reduceat(pao[rows], heads)
    versions = users["criteria_version"].to_numpy(dtype=object)[users_f].tolist()

    out: dict[int, UserRecommendations] = {}
    k_bounds = np.r_[k_first, n_k].tolist()
    r_bounds = np.r_[r_first, len(r_sel)].tolist()
    drop_l = drop_f.tolist()
    for f, u in enumerate(users_f.tolist()):
        if drop_l[f]:
            continue
        version = versions[f]
        out[u] = UserRecommendations(
            base_currency=bases_f[f],
            contribution=c_total[f],
            total_value=total[f],
            recommendations=tuple(recs[r_bounds[f] : r_bounds[f + 1]]),
            unallocated=unallocated[f],
            classes=tuple(class_results[k_bounds[f] : k_bounds[f + 1]]),
            prices_as_of=as_of[f],
            rates_as_of=fx.as_of,
            criteria_version=None if _is_null(version) else int(version),
            missing_prices=tuple(missing.get(f, ())),
        )
    return out


_QUANTIZE = np.frompyfunc(Decimal.quantize, 3, 1)


def _objects_of(values: list[Any]) -> np.ndarray:
    return np.fromiter(values, dtype=object, count=len(values))


def _lookup(values: np.ndarray, table: Mapping[Any, int]) -> np.ndarray:
    """table[v] for every v (-1 when absent), one look-up per run of equal values."""
    n = len(values)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    codes = np.fromiter((table.get(v, -1) for v in values[starts].tolist()), dtype=np.int64,
                        count=len(starts))  # fmt: skip
    return np.repeat(codes, np.diff(np.r_[starts, n]))


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
    shift = np.zeros(m, dtype=np.int64)
    shift[heads] = 1
    slots = heads + np.arange(len(heads))
    chain = np.empty(m + len(heads), dtype=object)
    chain[np.arange(m) + np.cumsum(shift)] = values
    chain[slots] = start
    out[groups[heads]] = np.add.reduceat(chain, slots)
    return out


def _ranks(groups: np.ndarray, keys: list[tuple[np.ndarray, bool]]) -> np.ndarray:
    """Position of each row within its group (`groups` ascending) when the group is sorted
    by `keys` (most significant first; each an array and whether descending), ties in row
    order: what a stable sort gives. Compares pairs of rows, for small groups."""
    m = len(groups)
    if m == 0:
        return np.empty(0, dtype=np.int64)
    heads = np.flatnonzero(np.r_[True, groups[1:] != groups[:-1]])
    sizes = np.diff(np.r_[heads, m])
    size_of = np.repeat(sizes, sizes)
    head_of = np.repeat(heads, sizes)
    i = np.repeat(np.arange(m), size_of)
    offsets = np.arange(len(i)) - np.repeat(np.cumsum(size_of) - size_of, size_of)
    j = head_of[i] + offsets
    before = np.zeros(len(i), dtype=bool)
    open_ = np.flatnonzero(i != j)
    for arr, descending in keys:
        if not len(open_):
            break
        a, b = arr[j[open_]], arr[i[open_]]
        first = (a > b) if descending else (a < b)
        before[open_[first]] = True
        open_ = open_[~first & (a == b)]
    before[open_[j[open_] < i[open_]]] = True
    return np.bincount(i, weights=before, minlength=m).astype(np.int64)


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
    need = np.where(diff > ZERO, diff, ZERO)
    needed = _sums(need, groups, n, None)
    full = needed <= money
    rest = np.full(n, ZERO, dtype=object)
    rest[full] = money[full] - needed[full]
    amounts = need.copy()
    part = ~full[groups]
    if not part.any():
        return amounts, rest
    amounts[part] = ZERO
    rows = np.flatnonzero(part & (target > ZERO))
    if not len(rows):
        return amounts, rest
    g, v, t = groups[rows], value[rows], target[rows]
    brk = np.full(len(rows), ZERO, dtype=object)
    pos = v > ZERO
    brk[pos] = v[pos] / t[pos]
    rank = _ranks(g, [(brk, False), (name_rank[rows], False)])
    heads = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[heads, len(rows)])
    by_rank = np.empty(len(rows), dtype=np.int64)
    by_rank[np.repeat(heads, sizes) + rank] = np.arange(len(rows))
    grp = g[heads]
    f = np.full(len(heads), ZERO, dtype=object)
    t_sum = np.full(len(heads), ZERO, dtype=object)
    v_sum = np.full(len(heads), ZERO, dtype=object)
    walking = np.arange(len(heads))
    step = 0
    while len(walking):
        r = by_rank[heads[walking] + step]
        t_sum[walking] = t_sum[walking] + t[r]
        v_sum[walking] = v_sum[walking] + v[r]
        f_w = (money[grp[walking]] + v_sum[walking]) / t_sum[walking]
        f[walking] = f_w
        more = step + 1 < sizes[walking]
        more[more] = ~(f_w[more] <= brk[by_rank[heads[walking[more]] + step + 1]])
        walking = walking[more]
        step += 1
    f = np.where(f > ONE, ONE, f)  # min(f, 1)
    f_row = np.repeat(f, sizes)  # rows are grouped like heads
    level = f_row * t - v
    amounts[rows] = np.where(level > ZERO, level, ZERO)
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
        specs.setdefault(user_id, []).append(ClassSpec._make((
            name, lo, hi, None if _is_null(max_assets) else int(max_assets),
            None if _is_null(min_value) else min_value,
        )))  # fmt: skip
    return specs
