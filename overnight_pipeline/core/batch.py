"""Scoring and recommendations for a whole batch of users at once.

The row-heavy work (every holding against every rule of its class, valuation, eligibility
and ordering) is vectorised with numpy/pandas; what is final money goes through the same
Decimal code as the one-user path (`recommendations.allocate`), so both give identical
results. Rule comparisons run on floats and fall back to Decimal wherever the floats are
equal, which keeps them exact: float(Decimal) is monotonic, so unequal floats order their
Decimals the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.recommendations import (
    ZERO,
    ClassSpec,
    Pick,
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
    batch: Batch, scores: BatchScores, fx: FxRates
) -> tuple[dict[Any, UserRecommendations], dict[Any, Exception]]:
    """SPEC §3 for every user of the batch; a user whose data fails (e.g. a missing rate)
    is reported in the second dict and the others carry on."""
    users = batch.users
    h = batch.holdings
    n = len(h)
    base_of = dict(zip(users["user_id"].tolist(), users["base_currency"].tolist(), strict=True))

    # 1. Values in the base currency, rate per distinct (currency, base) pair.
    priced = h["price"].notna().to_numpy()
    bases = h["user_id"].map(base_of).to_numpy(dtype=object)
    currencies = h["currency"].to_numpy(dtype=object)
    failures: dict[Any, Exception] = {}
    pair_rate: dict[tuple[str, str], Decimal | MissingRateError] = {}
    pairs = pd.DataFrame({"c": currencies, "b": bases}).drop_duplicates()
    for c, b in zip(pairs["c"].tolist(), pairs["b"].tolist(), strict=True):
        try:
            pair_rate[(c, b)] = fx.rate(c, b)
        except MissingRateError as exc:
            pair_rate[(c, b)] = exc
    rate = np.array([pair_rate[(c, b)] for c, b in zip(currencies, bases, strict=True)],
                    dtype=object)  # fmt: skip
    bad = np.array([isinstance(r, Exception) for r in rate], dtype=bool) & priced
    user_ids = h["user_id"].to_numpy(dtype=object)
    for i in np.flatnonzero(bad):
        failures.setdefault(user_ids[i], rate[i])
    ok = priced & ~bad
    value = np.full(n, None, dtype=object)
    q = h["quantity"].to_numpy(dtype=object)
    p = h["price"].to_numpy(dtype=object)
    value[ok] = q[ok] * p[ok] * rate[ok]

    # 3. Eligible rows (priced, score > 0) ordered by user, class, score desc, symbol.
    score_points = scores.holdings["score_points"].to_numpy()
    symbol_rank, _ = pd.factorize(h["symbol"], sort=True)
    user_code, user_uniques = pd.factorize(h["user_id"])
    class_code, _ = pd.factorize(h["asset_class"])
    elig = np.flatnonzero(ok & (score_points > 0))
    elig = elig[np.lexsort((symbol_rank[elig], -score_points[elig], class_code[elig],
                            user_code[elig]))]  # fmt: skip

    # Per-user slices: holdings in their order, eligible rows in theirs.
    h_order = np.argsort(user_code, kind="stable")
    h_bounds = _groups(user_code[h_order], len(user_uniques))
    e_bounds = _groups(user_code[elig], len(user_uniques))
    h_order_l = h_order.tolist()
    asset_ids = h["asset_id"].tolist()
    symbols = h["symbol"].tolist()
    classes_of = h["asset_class"].tolist()
    score_col = scores.holdings["score"].tolist()
    count_col = scores.holdings["criteria_count"].tolist()
    top_col = scores.holdings["top_contributor"].tolist()
    value_l = value.tolist()
    ok_l = ok.tolist()
    price_as_of = h["price_as_of"].tolist() if "price_as_of" in h else [None] * n
    elig_l = elig.tolist()

    specs = _class_specs(batch.classes)
    results: dict[Any, UserRecommendations] = {}
    row_of = {uid: i for i, uid in enumerate(user_uniques.tolist())}
    for user_id, base, contribution, version in zip(
        users["user_id"].tolist(), users["base_currency"].tolist(),
        users["contribution"].tolist(), users["criteria_version"].tolist(), strict=True,
    ):  # fmt: skip
        if user_id in failures:
            continue
        user_classes = specs.get(user_id, [])
        class_value = {c.name: ZERO for c in user_classes}
        eligible: dict[str, list[Pick]] = {c.name: [] for c in user_classes}
        prices_used: list[datetime] = []
        missing: list[str] = []
        u = row_of.get(user_id)
        if u is not None:
            for i in h_order_l[slice(*h_bounds[u])]:
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
        try:
            results[user_id] = allocate(
                base_currency=base,
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
    return results, failures


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
