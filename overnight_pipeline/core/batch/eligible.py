"""Step 3 of BEHAVIOUR §3 on a batch: each class row's eligible assets, in order and cut
to `max_assets`, as the pick columns the allocation reads."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.allocation import ClassTable
from overnight_pipeline.core.batch.frames import Batch, BatchScores
from overnight_pipeline.core.batch.rows import ClassRows, UserRows
from overnight_pipeline.core.recommendations import Picks, check_unique


def eligible_picks(
    batch: Batch,
    scores: BatchScores,
    rows: UserRows,
    classes: ClassRows,
    table: ClassTable,
    failures: dict[Any, Exception],
) -> Picks:
    """Step 3: each class row's eligible assets (priced, score > 0) by score desc, symbol
    and holding order, the first `max_assets` of them, as pick columns; sets the table's
    pick ranges. A user holding an eligible asset twice fails."""
    points = scores.holdings["score_points"].to_numpy()
    e_rows = _ranked(points, rows, classes, failures)
    e_k = classes.of_holding[e_rows]
    n_k = len(classes.specs)
    table.pick_start = np.searchsorted(e_k, np.arange(n_k)).tolist()
    table.pick_end = np.searchsorted(e_k, np.arange(n_k), "right").tolist()
    sh = scores.holdings
    asset_ids = batch.holdings["asset_id"].to_numpy(dtype=object)[e_rows]
    picks = Picks(
        asset_ids.tolist(),
        rows.symbols[e_rows].tolist(),
        sh["score"].to_numpy(dtype=object)[e_rows].tolist(),
        sh["criteria_count"].to_numpy()[e_rows].tolist(),
        sh["top_contributor"].to_numpy(dtype=object)[e_rows].tolist(),
        points[e_rows].tolist(),
    )
    _check_assets_once(asset_ids, e_k, picks, rows, classes, table, failures)
    return picks


def _ranked(
    points: np.ndarray, rows: UserRows, classes: ClassRows, failures: dict[Any, Exception]
) -> np.ndarray:
    """The eligible holding rows by class row, then score desc, symbol and holding order,
    the first `max_assets` of each class row."""
    of_k = classes.of_holding
    e_rows = np.flatnonzero(rows.alive(failures) & (points > 0) & (of_k >= 0))
    sym_rank, symbols = pd.factorize(rows.symbols[e_rows], sort=True)
    ranked: np.ndarray = e_rows[_by_keys(of_k[e_rows], points[e_rows], sym_rank, len(symbols))]
    e_rows = ranked
    e_k = of_k[e_rows]
    max_assets = np.array([s.max_assets or 0 for s in classes.specs], dtype=np.int64)
    if len(e_rows):
        nth = np.arange(len(e_rows)) - np.searchsorted(e_k, e_k)
        e_rows = e_rows[(max_assets[e_k] == 0) | (nth < max_assets[e_k])]
    return e_rows


def _by_keys(
    class_row: np.ndarray, points: np.ndarray, sym_rank: np.ndarray, n_symbols: int
) -> np.ndarray:
    """The order of the rows by class row, then points desc, then symbol (ties: row
    order): one stable sort of a combined int64 key when it fits (a third of
    `np.lexsort`'s three sorts), else `np.lexsort`."""
    if len(points):
        lo, hi = int(points.min()), int(points.max())
        span = (hi - lo + 1) * max(n_symbols, 1)
        if (int(class_row.max()) + 1) * span < 2**62:
            key = class_row * span + (hi - points) * max(n_symbols, 1) + sym_rank
            order: np.ndarray = np.argsort(key, kind="stable")
            return order
    order = np.lexsort((sym_rank, -points, class_row))
    return order


def _check_assets_once(
    asset_ids: np.ndarray,
    e_k: np.ndarray,
    picks: Picks,
    rows: UserRows,
    classes: ClassRows,
    table: ClassTable,
    failures: dict[Any, Exception],
) -> None:
    """A user with the same asset among its picks twice fails."""
    asset_code, _ = pd.factorize(asset_ids)
    span = int(asset_code.max()) + 1 if len(asset_code) else 1
    pair = np.sort(classes.user[e_k] * span + asset_code)
    for u in set((pair[1:][pair[1:] == pair[:-1]] // span).tolist()):
        first, last = classes.first[u], classes.first[u + 1]
        try:
            check_unique((), picks.asset_id[table.pick_start[first] : table.pick_end[last - 1]])
        except ValueError as exc:  # an asset twice
            rows.fail(failures, u, exc)
