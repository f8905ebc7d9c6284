"""What a batch reads and what it gives: the input frames and their columns, the scores
per holding row and per (holding, rule), and the result of a whole batch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from overnight_pipeline.core.batch.fundamentals import FundamentalsTable
from overnight_pipeline.core.recommendations import UserRecommendations
from overnight_pipeline.core.scoring import AssetScore, RuleOutcome

HOLDING_COLUMNS = (
    "user_id",
    "asset_id",
    "symbol",
    "asset_class",
    "quantity",
    "currency",
    "price",
    "price_as_of",
)
RULE_COLUMNS = ("user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points")
CLASS_COLUMNS = (
    "user_id",
    "name",
    "target_min",
    "target_max",
    "max_assets",
    "min_allocation_value",
)
USER_COLUMNS = ("user_id", "base_currency", "contribution", "criteria_version")


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
class HoldingKeys:
    """What scoring learnt about the holding rows of a frame, for the recommendations."""

    holdings: pd.DataFrame  # the frame described (recognised by identity)
    users: dict[Any, int]  # user_id -> code, in order of first appearance
    user_code: np.ndarray
    class_code: np.ndarray  # per holding, into class_names
    class_names: list[Any]
    asset_row: np.ndarray  # row of the fundamentals table; the same row is the same asset_id
    unknown_row: int  # the row of assets without fundamentals


@dataclass(frozen=True)
class BatchScores:
    """Scores per holding row of the batch, and the breakdown per (holding, rule)."""

    holdings: pd.DataFrame  # user_id, asset_id, asset_class, score, score_points,
    # max_possible_score, criteria_count, top_contributor (aligned with Batch.holdings)
    breakdown: pd.DataFrame  # holding (row of `holdings`), criterion_id, metric, matched,
    # points_awarded, actual_value, skipped_reason; rows grouped by holding, rules in order
    _keys: HoldingKeys | None = field(default=None, repr=False, compare=False)

    def asset_scores(self) -> dict[Any, dict[str, AssetScore]]:
        """Full `AssetScore` objects per user (for tests, replays and small batches)."""
        b = self.breakdown
        outcomes: list[list[RuleOutcome]] = [[] for _ in range(len(self.holdings))]
        for h, cid, metric, matched, points, actual, skipped in zip(
            b["holding"].tolist(),
            b["criterion_id"].tolist(),
            b["metric"].tolist(),
            b["matched"].tolist(),
            b["points_awarded"].tolist(),
            b["actual_value"].tolist(),
            b["skipped_reason"].tolist(),
            strict=True,
        ):
            outcomes[h].append(RuleOutcome(cid, metric, matched, points, actual, skipped))
        result: dict[Any, dict[str, AssetScore]] = {}
        s = self.holdings
        for i, (user_id, asset_id, score, max_score, top) in enumerate(
            zip(
                s["user_id"].tolist(),
                s["asset_id"].tolist(),
                s["score"].tolist(),
                s["max_possible_score"].tolist(),
                s["top_contributor"].tolist(),
                strict=True,
            )
        ):
            result.setdefault(user_id, {})[asset_id] = AssetScore(
                asset_id, score, max_score, top, tuple(outcomes[i])
            )
        return result


@dataclass(frozen=True)
class BatchResult:
    scores: BatchScores
    recommendations: dict[Any, UserRecommendations]
    failures: dict[Any, Exception]
