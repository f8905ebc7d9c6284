"""Scoring (docs/ALGORITHM.md §1) of every holding row of a batch at once.

Every holding is joined to its user's rules for its class with numpy index arithmetic, and
rules are compared on floats; where a float comparison ties, the exact Decimals decide
(`float(Decimal)` is monotonic, so unequal floats already order their Decimals). Points are
integers, so sums are exact."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.batch.arrays import codes_of, objects, run_codes
from overnight_pipeline.core.batch.frames import BatchScores, HoldingKeys
from overnight_pipeline.core.batch.fundamentals import FundamentalsTable
from overnight_pipeline.core.scoring import MISSING_FUNDAMENTAL, SCORE_PLACES
from overnight_pipeline.core.vocabulary import METRICS

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


def score_batch(
    holdings: pd.DataFrame, rules: pd.DataFrame, fundamentals: pd.DataFrame | FundamentalsTable
) -> BatchScores:
    """BEHAVIOUR §2 for every holding row against its user's rules for the holding's class."""
    pairs = _Pairs.of(holdings, rules)
    table = (
        fundamentals
        if isinstance(fundamentals, FundamentalsTable)
        else FundamentalsTable.of_snapshot(fundamentals)
    )
    a_row = table.rows(holdings["asset_id"].to_numpy(dtype=object))
    outcomes = _Outcomes.of(pairs, rules, table, a_row)
    keys = HoldingKeys(
        holdings,
        pairs.users,
        pairs.user_code,
        pairs.class_code,
        pairs.class_names,
        a_row,
        len(table.index),
    )
    return BatchScores(
        _scores_frame(holdings, pairs, outcomes), _breakdown_frame(rules, pairs, outcomes), keys
    )


@dataclass(frozen=True)
class _Pairs:
    """Every (holding, rule) pair to evaluate: the holding's user's rules for its class,
    grouped by holding, each user's rules in document order."""

    holding: np.ndarray  # per pair: its row of `holdings`
    rule: np.ndarray  # per pair: its row of `rules`
    counts: np.ndarray  # per holding: how many rules apply to it
    users: dict[Any, int]  # user_id -> code, in order of first appearance
    user_code: np.ndarray  # per holding
    classes: np.ndarray  # per holding: its asset class
    class_code: np.ndarray  # per holding, into class_names
    class_names: list[Any]

    @classmethod
    def of(cls, holdings: pd.DataFrame, rules: pd.DataFrame) -> _Pairs:
        n = len(holdings)
        # One integer key per (user, class), shared by holdings and rules.
        users: dict[Any, int] = {}
        h_user = run_codes(holdings["user_id"].to_numpy(dtype=object), users, grow=True)
        r_user = run_codes(rules["user_id"].to_numpy(dtype=object), users, grow=False)
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
        return cls(
            h_idx, r_idx, counts, users, h_user, h_class, class_codes[:n], class_uniques.tolist()
        )


@dataclass(frozen=True)
class _Outcomes:
    """Each pair's outcome: the rule's metric, the (asset, metric) cell it read, whether it
    matched or was skipped, the rule's points and the points awarded."""

    metric: np.ndarray
    cell: np.ndarray  # into the flat fundamentals tables
    exact: np.ndarray  # the flat table of exact fundamentals
    matched: np.ndarray
    skipped: np.ndarray
    points: np.ndarray
    awarded: np.ndarray

    @classmethod
    def of(
        cls, pairs: _Pairs, rules: pd.DataFrame, table: FundamentalsTable, a_row: np.ndarray
    ) -> _Outcomes:
        h_idx, r_idx = pairs.holding, pairs.rule
        metric_code = codes_of(rules["metric"].to_numpy(dtype=object), _METRIC_INDEX)
        op_code = codes_of(rules["operator"].to_numpy(dtype=object), _OP_INDEX)
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
        return cls(rows_m, cell, f_obj, matched, skipped, rule_points, awarded)


def _top_contributors(pairs: _Pairs, outcomes: _Outcomes, n: int) -> np.ndarray:
    """Per holding: the metric of the first matched rule with the most points (None when no
    rule matched)."""
    h_idx, rule_points = pairs.holding, outcomes.points
    top = np.full(n, None, dtype=object)
    m = np.flatnonzero(outcomes.matched)
    if len(m):
        hm = h_idx[m]
        group_start = np.flatnonzero(np.r_[True, hm[1:] != hm[:-1]])
        best = np.maximum.reduceat(rule_points[m], group_start)
        sizes = np.diff(np.r_[group_start, len(m)])
        at_best = m[rule_points[m] == np.repeat(best, sizes)]
        hb = h_idx[at_best]
        first = at_best[np.r_[True, hb[1:] != hb[:-1]]]
        top[h_idx[first]] = _METRIC_NAMES[outcomes.metric[first]]
    return top


def _scores_frame(holdings: pd.DataFrame, pairs: _Pairs, outcomes: _Outcomes) -> pd.DataFrame:
    """`BatchScores.holdings`: score, maximum and top contributor per holding row."""
    n = len(holdings)
    h_idx = pairs.holding
    score_points = (
        np.bincount(h_idx, weights=outcomes.awarded, minlength=n).round().astype(np.int64)
    )
    max_points = np.bincount(h_idx, weights=np.maximum(outcomes.points, 0), minlength=n)
    top = _top_contributors(pairs, outcomes, n)
    return pd.DataFrame(
        {
            "user_id": objects(holdings["user_id"].to_numpy(dtype=object)),
            "asset_id": objects(holdings["asset_id"].to_numpy(dtype=object)),
            "asset_class": objects(pairs.classes),
            "score": objects(_decimal_cache(score_points)),
            "score_points": score_points,
            "max_possible_score": objects(_decimal_cache(max_points.round().astype(np.int64))),
            "criteria_count": pairs.counts,
            "top_contributor": objects(top),
        },
        copy=False,
    )


def _breakdown_frame(rules: pd.DataFrame, pairs: _Pairs, outcomes: _Outcomes) -> pd.DataFrame:
    """`BatchScores.breakdown`: one row per (holding, rule) pair."""
    skipped = outcomes.skipped
    actual_obj = outcomes.exact[outcomes.cell]
    actual_obj[skipped] = None
    reason = np.full(len(pairs.holding), None, dtype=object)
    reason[skipped] = MISSING_FUNDAMENTAL
    return pd.DataFrame(
        {
            "holding": pairs.holding,
            "criterion_id": objects(rules["id"].to_numpy(dtype=object)[pairs.rule]),
            "metric": objects(_METRIC_NAMES[outcomes.metric]),
            "matched": outcomes.matched,
            "points_awarded": outcomes.awarded,
            "actual_value": objects(actual_obj),
            "skipped_reason": objects(reason),
        },
        copy=False,
    )


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


def _floats(values: np.ndarray) -> np.ndarray:
    """`to_float` of a column with few distinct values: float(Decimal) is slow, so it is
    made once per distinct value (equal Decimals, 3.1 and 3.10, have the same float),
    found by `pd.factorize` (half the time of a `str()` key per value)."""
    try:
        codes, uniques = pd.factorize(values)
    except TypeError:  # an unhashable value (a signalling NaN): float() raises for it
        return np.array([np.nan if v is None else float(v) for v in values.tolist()])
    table = np.array([*map(float, uniques.tolist()), np.nan], dtype=np.float64)
    out: np.ndarray = table[codes]  # code -1 (None or NaN): the last, NaN
    return out


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
