"""The audit vocabulary (docs/EVENTS.md): event payloads, the correlation id, the job-run
status rule."""

from __future__ import annotations

import uuid
from datetime import date
from decimal import Decimal
from typing import Any

import orjson
import pytest

from overnight_pipeline.core import audit
from overnight_pipeline.core.recommendations import (
    ClassResult,
    RecommendedAsset,
    UserRecommendations,
)

DAY = date(2026, 11, 30)
D0 = Decimal("0")
CACHE_STEP = "recommendation_cache"


def test_a_calculation_keeps_its_correlation_id_across_retries_and_reexecutions() -> None:
    cid = audit.run_correlation_id("root-run", "2026-11-30|NYSE")
    assert cid == audit.correlation_id_for("root-run:2026-11-30|NYSE")
    # The ids already in the event store were made this way: they must never change.
    assert cid == uuid.uuid5(uuid.NAMESPACE_URL, "overnight-run:root-run:2026-11-30|NYSE")
    assert cid != audit.run_correlation_id("root-run", "recalculation")


def test_calc_started_leaves_out_the_holdings_of_a_user_not_valued() -> None:
    common = {"market": "NYSE", "marketDate": "2026-11-30", "runId": "r1", "criteriaVersion": 3}
    assert audit.calc_started(
        market="NYSE", day=DAY, run_id="r1", criteria_version=3, holdings=30
    ) == {**common, "holdings": 30}
    assert audit.calc_started(market="NYSE", day=DAY, run_id="r1", criteria_version=3) == common


def test_calc_completed_says_the_amounts_as_exact_strings() -> None:
    rec = UserRecommendations(
        base_currency="USD",
        contribution=Decimal("1000.00"),
        total_value=Decimal("5000.00"),
        recommendations=(),
        unallocated=Decimal("1000.00"),
        classes=(
            ClassResult("Stocks", *(Decimal("0"),) * 4, Decimal("0"), Decimal("0"), "no_eligible"),
            ClassResult("Bonds", *(Decimal("0"),) * 6, None),
        ),
        prices_as_of=None,
        rates_as_of=None,
        criteria_version=2,
        missing_prices=("ABC",),
    )
    assert audit.calc_completed(rec, market="NYSE", day=DAY) == {
        "status": "completed",
        "market": "NYSE",
        "marketDate": "2026-11-30",
        "recommendations": 0,
        "allocated": "0",
        "unallocated": "1000.00",
        "contribution": "1000.00",
        "baseCurrency": "USD",
        "missingPrices": ["ABC"],
        "classes": {"Stocks": "no_eligible"},
    }
    assert audit.calc_failed(market="NYSE", day=DAY, stage="inputs", error="no rate") == {
        "status": "failed",
        "stage": "inputs",
        "error": "no rate",
        "market": "NYSE",
        "marketDate": "2026-11-30",
    }


def _rec(**changes: Any) -> UserRecommendations:
    fields: dict[str, Any] = {
        "base_currency": "USD",
        "contribution": Decimal("1000.00"),
        "total_value": Decimal("5000.00"),
        "recommendations": (),
        "unallocated": Decimal("1000.00"),
        "classes": (),
        "prices_as_of": None,
        "rates_as_of": None,
        "criteria_version": 2,
    }
    return UserRecommendations(**{**fields, **changes})


def test_payload_texts_are_the_bytes_orjson_writes_of_the_payloads() -> None:
    """The texts the shard step writes (`PayloadTexts`) are `orjson.dumps` of the dicts,
    byte for byte: odd strings escaped, nulls, empty and full lists."""
    odd = 'N"Y\\SE é\t'
    texts = audit.PayloadTexts(market=odd, day=DAY, run_id='run "1"')
    common = {"market": odd, "day": DAY, "run_id": 'run "1"'}
    for version in (3, None, 0):
        for holdings in (30, 0, None):
            expected = audit.calc_started(**common, criteria_version=version, holdings=holdings)
            assert texts.started(version, holdings) == orjson.dumps(expected).decode()
    stocks = ClassResult('St"ocks', *(Decimal("0"),) * 6, "no_eligible")
    bonds = ClassResult("Bonds", *(Decimal("0"),) * 6, None)
    recs = [
        _rec(),
        _rec(classes=(stocks, bonds), missing_prices=("ABC", 'D"E')),
        _rec(base_currency="EUR", unallocated=Decimal("0E-2"), contribution=Decimal("1E+3")),
        _rec(classes=(bonds,)),
        _rec(
            recommendations=(
                RecommendedAsset("a1", "A", "Stocks", *(Decimal("1.50"),) * 2, "USD", D0, 3, None),
                RecommendedAsset(
                    "a2", "B", "Stocks", Decimal("2"), Decimal("7"), "USD", D0, 1, "pe"
                ),
            )
        ),
    ]
    for rec in recs * 2:  # the second time from what the texts remember
        expected = audit.calc_completed(rec, market=odd, day=DAY)
        assert texts.completed(rec) == orjson.dumps(expected).decode()
    failed = audit.calc_failed(market=odd, day=DAY, stage="inputs", error='no "rate" é')
    assert texts.failed(stage="inputs", error='no "rate" é') == orjson.dumps(failed).decode()


def test_a_user_gets_four_events_in_order_or_two_when_not_valued() -> None:
    cid = uuid.uuid4()
    events = audit.user_events(cid, "u", started=1, captured=2, scores=3, completed=4)
    assert [(e[2], e[3]) for e in events] == list(zip(audit.EVENT_TYPES, [1, 2, 3, 4], strict=True))
    assert audit.unvalued_user_events(cid, "u", started=1, completed=4) == [
        (cid, "u", "CALC_STARTED", 1),
        (cid, "u", "CALC_COMPLETED", 4),
    ]


@pytest.mark.parametrize(
    ("succeeded", "failed_steps", "users_failed", "prices_missing", "status"),
    [
        (True, [], 0, 0, "completed"),
        (True, [], 2, 0, "partial"),
        (True, [], 0, 5, "partial"),
        (False, ["recommendation_cache"], 0, 0, "partial"),
        (False, ["recommendations"], 0, 0, "failed"),
        (False, ["recommendations", "recommendation_cache"], 0, 0, "failed"),
        (False, [], 0, 0, "failed"),  # the run worker died before any step
    ],
)
def test_the_status_of_a_finished_run(
    succeeded: bool, failed_steps: list[str], users_failed: int, prices_missing: int, status: str
) -> None:
    assert (
        audit.decide_status(
            succeeded=succeeded,
            failed_steps=failed_steps,
            users_failed=users_failed,
            prices_missing=prices_missing,
            cache_step=CACHE_STEP,
        )
        == status
    )
