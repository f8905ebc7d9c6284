"""Scoring and recommendations for a whole batch of users at once.

The row-heavy work (every holding against every rule of its class, valuation, eligibility
and ordering) is vectorised with numpy/pandas. Rule comparisons run on floats and fall back
to Decimal wherever the floats are equal, which keeps them exact: float(Decimal) is
monotonic, so unequal floats order their Decimals the same way.

Money is exact: `quantity × price` products and their sums per user, class and currency
are Decimal with no rounding (`allocation.EXACT`), rates exact ratios, and each user's
steps 2-7 are the one-user path's own `recommendations.allocate` on integers
(`core/allocation.py`).

The modules follow docs/ALGORITHM.md: `frames` (what a batch reads and gives),
`fundamentals` and `scoring` (§1), `rows` (whose rows are whose), `values` (step 1: rates,
class values, bands), `eligible` (step 3), `recommend` (every user through steps 2-7),
`run` (both), `arrays` (array helpers).
"""

from overnight_pipeline.core.batch.frames import (
    CLASS_COLUMNS,
    HOLDING_COLUMNS,
    RULE_COLUMNS,
    USER_COLUMNS,
    Batch,
    BatchResult,
    BatchScores,
)
from overnight_pipeline.core.batch.fundamentals import FundamentalsTable
from overnight_pipeline.core.batch.recommend import recommend_batch
from overnight_pipeline.core.batch.run import run_batch
from overnight_pipeline.core.batch.scoring import score_batch

__all__ = [
    "CLASS_COLUMNS",
    "HOLDING_COLUMNS",
    "RULE_COLUMNS",
    "USER_COLUMNS",
    "Batch",
    "BatchResult",
    "BatchScores",
    "FundamentalsTable",
    "recommend_batch",
    "run_batch",
    "score_batch",
]
