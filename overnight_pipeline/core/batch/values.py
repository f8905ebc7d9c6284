"""Step 1 of BEHAVIOUR §3 on a batch, exactly: the rate of each (currency, base) pair, each
class row's value and band as integer ratios, and each user's value in classes it does not
have."""

from __future__ import annotations

from decimal import localcontext
from itertools import repeat
from operator import methodcaller
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.allocation import EXACT, ClassTable
from overnight_pipeline.core.batch.arrays import (
    all_finite,
    finite,
    heads,
    ratio_columns,
    run_codes,
)
from overnight_pipeline.core.batch.frames import Batch
from overnight_pipeline.core.batch.rows import ClassRows, UserRows
from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.recommendations import ZERO

Rates = tuple[list[tuple[int, int]], np.ndarray]
_RATIO = methodcaller("as_integer_ratio")  # of a Decimal, or of an int (int × int)


def pair_rates(batch: Batch, rows: UserRows, fx: FxRates, failures: dict[Any, Exception]) -> Rates:
    """The exact rate of each distinct (currency, base) pair and each holding row's pair;
    a user with a priced holding whose pair has no rate fails."""
    h = batch.holdings
    currencies: dict[Any, int] = {}  # a user's holdings often share a currency: runs
    cur_code = run_codes(h["currency"].to_numpy(dtype=object), currencies, grow=True)
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


def class_values(
    batch: Batch,
    rows: UserRows,
    classes: ClassRows,
    rates: Rates,
    failures: dict[Any, Exception],
) -> tuple[ClassTable, list[tuple[int, int]]]:
    """Step 1, exactly: a class table with each class row's value and band as integer
    ratios, and each user's value in classes it does not have. `quantity × price` is
    summed per (class row, currency) without rounding, then turned into base currency by
    the pair's exact rate. A user whose numbers are not finite decimals fails."""
    _check_holdings(batch.holdings, rows, failures)
    table, extra = _summed(batch.holdings, rows, classes, rates, failures)
    _bands(table, rows, classes, failures)
    return table, extra


def _check_holdings(h: pd.DataFrame, rows: UserRows, failures: dict[Any, Exception]) -> None:
    """A user with a priced holding whose quantity or price is not a finite decimal fails."""
    checked = None
    for column in ("quantity", "price"):
        values = h[column].to_numpy(dtype=object)
        if all_finite(values.tolist()):  # every row's, priced or not: nobody fails
            continue
        if checked is None:
            checked = np.flatnonzero(rows.alive(failures))
        for i in checked[~finite(values[checked])].tolist():
            error = ValueError(
                f"holding {rows.symbols[i]!r}: {column} {values[i]!r} is not a finite decimal"
            )
            rows.fail(failures, int(rows.user[i]), error)


def _summed(
    h: pd.DataFrame,
    rows: UserRows,
    classes: ClassRows,
    rates: Rates,
    failures: dict[Any, Exception],
) -> tuple[ClassTable, list[tuple[int, int]]]:
    """The value of each class row, and of each user's holdings in classes it does not
    have, as exact ratios in its base currency (the users still alive)."""
    quantity, price = h["quantity"].to_numpy(dtype=object), h["price"].to_numpy(dtype=object)
    ratio, pair_of_row = rates
    n_k = len(classes.specs)
    n_pairs = max(len(ratio), 1)
    v_rows = np.flatnonzero(rows.alive(failures))
    k = classes.of_holding[v_rows]
    group = np.where(k >= 0, k, n_k + rows.user[v_rows]) * n_pairs + pair_of_row[v_rows]
    by_group = np.argsort(group, kind="stable")
    v_rows, group = v_rows[by_group], group[by_group]
    starts = heads(group)
    with localcontext(EXACT):
        products = quantity[v_rows] * price[v_rows]
        sums = np.add.reduceat(products, starts).tolist() if len(starts) else []
    table = ClassTable(value_num=[0] * n_k, value_den=[1] * n_k)
    extra = [(0, 1)] * rows.n_users
    value_num, value_den = table.value_num, table.value_den
    # `add_ratio` written out for the class rows (≈ 5 groups a user): the sums' ratios by
    # one C-level map, no call or tuple per group.
    for (row, p), (a_num, a_den) in zip(
        map(divmod, group[starts].tolist(), repeat(n_pairs)),
        map(_RATIO, sums),
        strict=True,
    ):
        num, den = ratio[p]
        a_num, a_den = a_num * num, a_den * den
        if row >= n_k:
            extra[row - n_k] = _added(extra[row - n_k], a_num, a_den)
        elif value_num[row] == 0:
            value_num[row], value_den[row] = a_num, a_den
        elif value_den[row] == a_den:
            value_num[row] += a_num
        else:
            value_num[row] = value_num[row] * a_den + a_num * value_den[row]
            value_den[row] *= a_den
    return table, extra


def _added(acc: tuple[int, int], a_num: int, a_den: int) -> tuple[int, int]:
    """acc + a_num / a_den as `add_ratio` adds (not reduced)."""
    if acc[0] == 0:
        return a_num, a_den
    if acc[1] == a_den:
        return acc[0] + a_num, a_den
    return acc[0] * a_den + a_num * acc[1], acc[1] * a_den


def _bands(
    table: ClassTable, rows: UserRows, classes: ClassRows, failures: dict[Any, Exception]
) -> None:
    """Each class row's band and minimum into `table` as integer ratios; a user whose band
    or minimum is not a finite decimal fails (the bound is then read as 0)."""
    n_k = len(classes.specs)
    if n_k:
        _, lo, hi, _, minimum = zip(*classes.specs, strict=True)
    else:
        lo = hi = minimum = ()
    columns = {
        "target_min": list(lo),
        "target_max": list(hi),
        "min_allocation_value": [m or ZERO for m in minimum],
    }
    for name, bounds in columns.items():
        if all_finite(bounds):
            continue
        for row in np.flatnonzero(~finite(np.array(bounds, dtype=object))).tolist():
            spec = classes.specs[row]
            error = ValueError(
                f"asset class {spec.name!r}: {name} {bounds[row]!r} is not a finite decimal"
            )
            rows.fail(failures, int(classes.user[row]), error)
            bounds[row] = ZERO
    table.lo_num, table.lo_den = ratio_columns(columns["target_min"])
    table.hi_num, table.hi_den = ratio_columns(columns["target_max"])
    table.min_num, table.min_den = ratio_columns(columns["min_allocation_value"])
