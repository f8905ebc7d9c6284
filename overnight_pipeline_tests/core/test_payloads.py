from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from overnight_pipeline.core.payloads import (
    CachedPortfolioSummary,
    CachedRecommendations,
    InvalidDocument,
    cache_payloads,
    check_documents,
    check_objects,
    upgrade_legacy,
)
from overnight_pipeline_tests.core.helpers import band, holding, run, score

USER = uuid.UUID("6f1c0000-0000-4000-8000-000000000001")
NOW = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


def _payloads():
    r = run(
        [band("A", 40, 60), band("B", 40, 60)],
        [holding("AAA", "A", 600), holding("BBB", "B", 400)],
        [score("AAA", 10), score("BBB", 10)],
    )
    return cache_payloads(USER, r, generated_at=NOW, asset_count=2)


def test_cache_payload_is_camel_case_with_decimal_strings() -> None:
    recs, summary = _payloads()
    doc = json.loads(recs.model_dump_json(by_alias=True))
    assert set(doc) == {
        "schemaVersion",
        "userId",
        "generatedAt",
        "recommendations",
        "portfolioSummary",
        "dataFreshness",
    }
    first = doc["recommendations"][0]
    assert set(first) == {
        "assetId",
        "symbol",
        "score",
        "amount",
        "currency",
        "allocationGap",
        "breakdown",
    }
    assert (
        first["amount"] == "600.00"
        and first["score"] == "10.0000"
        and first["allocationGap"] == "10.00"
    )
    assert set(first["breakdown"]) == {"criteriaCount", "topContributor"}
    assert doc["portfolioSummary"] == {
        "totalValue": "1000.00",
        "baseCurrency": "USD",
        "allocations": {"A": "60.00", "B": "40.00"},
    }
    assert set(doc["dataFreshness"]) == {"pricesAsOf", "ratesAsOf", "criteriaVersion"}
    sdoc = json.loads(summary.model_dump_json(by_alias=True))
    assert sdoc["allocations"][0] == {
        "className": "A",
        "currentPercent": "60.00",
        "targetMin": "40",
        "targetMax": "60",
    }
    assert sdoc["assetCount"] == 2 and sdoc["schemaVersion"] == 2
    assert doc["userId"] == sdoc["userId"] == str(USER)


def test_payload_round_trips_and_rejects_unknown_fields() -> None:
    recs, summary = _payloads()
    text = recs.model_dump_json(by_alias=True)
    assert CachedRecommendations.model_validate_json(text) == recs
    assert (
        CachedPortfolioSummary.model_validate_json(summary.model_dump_json(by_alias=True))
        == summary
    )
    doc = json.loads(text)
    doc["sneaky"] = 1
    with pytest.raises(ValidationError, match="sneaky"):
        CachedRecommendations.model_validate(doc)
    doc.pop("sneaky")
    doc["schemaVersion"] = 99
    with pytest.raises(ValidationError, match="schemaVersion"):
        CachedRecommendations.model_validate(doc)
    doc["schemaVersion"] = 2
    doc["recommendations"][0]["amount"] = 600.0
    with pytest.raises(ValidationError, match="amount"):
        CachedRecommendations.model_validate(doc)


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.integers(0, 10**12), min_size=1, max_size=8),
    contribution=st.decimals(0, 10**9, places=2),
    base=st.sampled_from(["USD", "BRL", "JPY", "EUR"]),
)
def test_whatever_the_writer_builds_passes_the_readers_gate(
    values: list[int], contribution, base: str
) -> None:
    holdings = [holding(f"A{i}", "AB"[i % 2], v, currency="USD") for i, v in enumerate(values)]
    result = run(
        [band("A", 40, 60), band("B", "0.5", "99.9999")],
        holdings,
        [score(f"A{i}", (i * 7) % 30 - 10) for i in range(len(values))],
        contribution=str(contribution),
        base=base,
    )
    recs, summary = cache_payloads(USER, result, generated_at=NOW, asset_count=len(values))
    checked, portfolio = check_documents(
        recs.model_dump_json(by_alias=True), summary.model_dump_json(by_alias=True), str(USER)
    )
    assert checked == json.loads(recs.model_dump_json(by_alias=True))
    assert portfolio["userId"] == str(USER)


def test_the_gate_refuses_another_owner_and_the_legacy_version() -> None:
    recs, summary = _payloads()
    text, stext = recs.model_dump_json(by_alias=True), summary.model_dump_json(by_alias=True)
    with pytest.raises(InvalidDocument, match="another user"):
        check_documents(text, stext, str(uuid.uuid4()))
    old_recs = {**json.loads(text), "schemaVersion": 1}
    old_summary = {k: v for k, v in json.loads(stext).items() if k != "userId"}
    old_summary["schemaVersion"] = 1
    with pytest.raises(InvalidDocument, match="schemaVersion"):
        check_objects(old_recs, old_summary, str(USER))
    upgraded = upgrade_legacy(old_recs, old_summary, USER)
    assert check_objects(*upgraded, str(USER)) == (json.loads(text), json.loads(stext))
