"""Whose rows are whose: the batch's users, each holding row's user, each user's class rows
and each holding's class row, and which users have failed so far."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.batch.arrays import is_null, present, run_codes
from overnight_pipeline.core.batch.frames import Batch, BatchScores, HoldingKeys
from overnight_pipeline.core.recommendations import ClassSpec, check_unique


@dataclass(frozen=True)
class UserRows:
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
    def of(cls, batch: Batch, scores: BatchScores) -> UserRows:
        h = batch.holdings
        user_ids = batch.users["user_id"].tolist()
        row_of = {uid: u for u, uid in enumerate(user_ids)}
        keys = scores._keys
        if keys is not None and keys.holdings is h:
            to_row = np.array([row_of.get(uid, -1) for uid in keys.users] + [-1], dtype=np.int64)
            user = to_row[keys.user_code]
        else:
            user = run_codes(h["user_id"].to_numpy(dtype=object), row_of, grow=False)
        known = user >= 0
        priced = present(h["price"].to_numpy(dtype=object)) & known
        return cls(user_ids, row_of, user, known, priced, h["symbol"].to_numpy(dtype=object))

    def fail(self, failures: dict[Any, Exception], u: int, error: Exception) -> None:
        """User `u` (a row of `users`) fails with `error`; its first error is kept."""
        failures.setdefault(self.user_ids[u], error)

    def failed(self, failures: dict[Any, Exception]) -> np.ndarray:
        """Per row of `users`: whether that user has failed."""
        out = np.zeros(self.n_users, dtype=bool)
        for uid in failures:
            u = self.row_of.get(uid)
            if u is not None:
                out[u] = True
        return out

    def alive(self, failures: dict[Any, Exception]) -> np.ndarray:
        """Per holding row: priced, and its user has not failed."""
        alive: np.ndarray = self.priced & ~self.failed(failures)[np.maximum(self.user, 0)]
        return alive


@dataclass(frozen=True)
class ClassRows:
    """The class rows of the batch's users, grouped by user in each user's order, and the
    class row of each holding (-1: a class its user does not have)."""

    specs: list[ClassSpec]
    user: np.ndarray
    first: list[int]  # user u's rows are first[u] to first[u + 1]
    of_holding: np.ndarray

    @classmethod
    def of(
        cls,
        batch: Batch,
        rows: UserRows,
        failures: dict[Any, Exception],
        keys: HoldingKeys | None = None,
    ) -> ClassRows:
        """A user with a class name twice fails. `keys`: what scoring learnt of the
        holdings (their class codes are reused when they describe `batch.holdings`)."""
        cl, h = batch.classes, batch.holdings
        c_user = run_codes(cl["user_id"].to_numpy(dtype=object), rows.row_of, grow=False)
        c_rows = np.flatnonzero(c_user >= 0)
        c_rows = c_rows[np.argsort(c_user[c_rows], kind="stable")]
        c_user = c_user[c_rows]
        first = np.searchsorted(c_user, np.arange(rows.n_users + 1)).tolist()
        specs = _class_specs(cl, c_rows)
        n_k = len(specs)
        codes = _class_codes(cl["name"].to_numpy(dtype=object)[c_rows], h, keys)
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


def _class_codes(names: np.ndarray, h: pd.DataFrame, keys: HoldingKeys | None) -> np.ndarray:
    """One code per distinct class name: the class rows' names (`names`), then the
    holdings' classes. Scoring's codes of the holdings' classes are reused when `keys`
    describes `h` and every name is a string (no null to match as pandas would)."""
    listed = names.tolist()
    if keys is None or keys.holdings is not h or not set(map(type, listed)) <= {str}:
        codes, _ = pd.factorize(
            np.concatenate([names, h["asset_class"].to_numpy(dtype=object)]),
            use_na_sentinel=False,
        )
        return codes
    index = {name: code for code, name in enumerate(keys.class_names)}
    mine = np.fromiter((index.setdefault(n, len(index)) for n in listed), np.int64, len(listed))
    return np.concatenate([mine, keys.class_code.astype(np.int64, copy=False)])


def _class_specs(classes: pd.DataFrame, rows: np.ndarray) -> list[ClassSpec]:
    """The class rows `rows` as `ClassSpec`s."""

    def column(name: str) -> list[Any]:
        listed: list[Any] = classes[name].to_numpy(dtype=object)[rows].tolist()
        return listed

    max_assets = [None if is_null(v) else int(v) for v in column("max_assets")]
    minimum = [None if is_null(v) else v for v in column("min_allocation_value")]
    fields = (column("name"), column("target_min"), column("target_max"), max_assets, minimum)
    return list(map(ClassSpec._make, zip(*fields, strict=True)))
