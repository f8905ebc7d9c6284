"""The fundamentals scoring reads: one row per asset, exact and as floats."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import repeat
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.batch.arrays import to_float
from overnight_pipeline.core.vocabulary import METRICS


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
        return cls(frame.index, exact, to_float(exact))

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
