"""A whole batch: scored, then recommended."""

from __future__ import annotations

from overnight_pipeline.core.batch.frames import Batch, BatchResult
from overnight_pipeline.core.batch.recommend import recommend_batch
from overnight_pipeline.core.batch.scoring import score_batch
from overnight_pipeline.core.money import FxRates


def run_batch(batch: Batch, fx: FxRates) -> BatchResult:
    """Score every holding of the batch and recommend for every user.

    The garbage collector keeps running: pausing it is process-wide, and steps share a
    process (its cost: docs/PERFORMANCE.md)."""
    scores = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recs, failures = recommend_batch(batch, scores, fx)
    return BatchResult(scores, recs, failures)
