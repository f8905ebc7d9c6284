"""BEHAVIOUR §3 for every user of a batch: the row work on arrays (steps 1 and 3), then
each user allocated (steps 2 and 4-6) and reported (step 7) by the one-user path's own
functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.allocation import allocate_exact
from overnight_pipeline.core.batch.arrays import is_null
from overnight_pipeline.core.batch.eligible import eligible_picks
from overnight_pipeline.core.batch.frames import Batch, BatchScores
from overnight_pipeline.core.batch.rows import ClassRows, UserRows
from overnight_pipeline.core.batch.values import class_values, pair_rates
from overnight_pipeline.core.money import FxRates, minor_unit
from overnight_pipeline.core.recommendations import ZERO, UserRecommendations, result_of


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
    rows = UserRows.of(batch, scores)
    failures: dict[Any, Exception] = {}
    rates = pair_rates(batch, rows, fx, failures)
    classes = ClassRows.of(batch, rows, failures, scores._keys)
    table, extra = class_values(batch, rows, classes, rates, failures)
    picks = eligible_picks(batch, scores, rows, classes, table, failures)
    missing = _missing_prices(rows)
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
        c_total = ZERO if is_null(contribution) else contribution
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
                criteria_version=None if is_null(version) else int(version),
                missing_prices=tuple(missing.get(u, ())),
            )
        except (ArithmeticError, ValueError, KeyError, TypeError) as exc:
            failures[user_id] = exc
    return results, failures


def _missing_prices(rows: UserRows) -> dict[int, list[Any]]:
    """Per row of `users`: the symbols of its holdings without a price, in holding order."""
    missing: dict[int, list[Any]] = {}
    for i in np.flatnonzero(rows.known & ~rows.priced).tolist():
        missing.setdefault(int(rows.user[i]), []).append(rows.symbols[i])
    return missing


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
