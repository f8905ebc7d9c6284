"""The two cache documents of a user's result (BEHAVIOUR §5) as the writer emits them: plain
JSON values serialised once with orjson, without building the pydantic models.

The models of `core.payloads` stay the contract: `cache_payloads` builds them (the replay
check, the tests) and `check_documents` is the reader's gate. On the write path the models
validated, field by field, values the pipeline had just computed, then were dumped to dicts
and encoded again: ≈ 16 CPU-s per 100,000 users (issue 25's profile); 150-190 µs a user
then, 19-26 µs here (docs/PERFORMANCE.md, "The lean night (issue 25)"). What this module
emits equals the models' JSON dump value for value and passes the reader's gate (tests:
overnight_pipeline_tests/core/test_cache_documents.py, under hypothesis).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from operator import attrgetter
from typing import Any

import orjson

from overnight_pipeline.core.allocation import CENTS_TEXTS
from overnight_pipeline.core.money import quantum
from overnight_pipeline.core.payloads import SCHEMA_VERSION
from overnight_pipeline.core.recommendations import PERCENT_PLACES, UserRecommendations

# Datetimes as pydantic dumps them: ISO 8601, "Z" for UTC, microseconds only when set.
_OPTIONS = orjson.OPT_UTC_Z
_CURRENT_PERCENT = attrgetter("current_percent")


def _text(value: Decimal) -> str:
    """`format(value, "f")`. str() gives the same text unless it chose an exponent, in
    ≈ 150 ns instead of 300-700 (≈ 25 values a user)."""
    text = str(value)
    return format(value, "f") if "E" in text else text


def _percent(value: Decimal) -> str:
    return format(value.quantize(PERCENT_PLACES), "f")


def document_values(
    user_id: uuid.UUID, result: UserRecommendations, *, generated_at: datetime, asset_count: int
) -> tuple[dict[str, Any], dict[str, Any]]:
    """`recs:{userId}` and `portfolio:{userId}` as JSON values, equal to the models'
    `model_dump(mode="json", by_alias=True)`."""
    total = _text(result.total_value.quantize(quantum(result.base_currency)))
    owner = str(user_id)
    classes = result.classes
    shared = CENTS_TEXTS.get  # the allocation's percentages and gaps are mostly shared
    # In both documents.
    percents = [shared(id(p)) or _percent(p) for p in map(_CURRENT_PERCENT, classes)]
    recs = {
        "schemaVersion": SCHEMA_VERSION,
        "userId": owner,
        "generatedAt": generated_at,
        "recommendations": [
            {
                "assetId": r.asset_id,
                "symbol": r.symbol,
                "score": _text(r.score),
                "amount": _text(r.amount),
                "currency": r.currency,
                "allocationGap": shared(id(r.allocation_gap)) or _text(r.allocation_gap),
                "breakdown": {
                    "criteriaCount": r.criteria_count,
                    "topContributor": r.top_contributor,
                },
            }
            for r in result.recommendations
        ],
        "portfolioSummary": {
            "totalValue": total,
            "baseCurrency": result.base_currency,
            "allocations": {c.name: p for c, p in zip(classes, percents, strict=True)},
        },
        "dataFreshness": {
            "pricesAsOf": result.prices_as_of,
            "ratesAsOf": result.rates_as_of,
            "criteriaVersion": None
            if result.criteria_version is None
            else str(result.criteria_version),
        },
    }
    portfolio = {
        "schemaVersion": SCHEMA_VERSION,
        "userId": owner,
        "totalValue": total,
        "assetCount": asset_count,
        "allocations": [
            {
                "className": c.name,
                "currentPercent": p,
                "targetMin": _text(c.target_min),
                "targetMax": _text(c.target_max),
            }
            for c, p in zip(classes, percents, strict=True)
        ],
    }
    return recs, portfolio


def cache_documents(
    user_id: uuid.UUID, result: UserRecommendations, *, generated_at: datetime, asset_count: int
) -> tuple[bytes, bytes]:
    """Both documents as JSON bytes."""
    recs, portfolio = document_values(
        user_id, result, generated_at=generated_at, asset_count=asset_count
    )
    return orjson.dumps(recs, option=_OPTIONS), orjson.dumps(portfolio, option=_OPTIONS)
