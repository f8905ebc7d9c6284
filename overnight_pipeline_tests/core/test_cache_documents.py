"""The writer's cache documents (`core.cache_documents`, orjson without the models) are the
contract's documents: equal to the pydantic models' JSON dump value for value, and accepted
by the reader's gate, for random results (issue 25)."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight_pipeline.core.cache_documents import cache_documents
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.payloads import cache_payloads, check_documents
from overnight_pipeline.core.recommendations import UserRecommendations
from overnight_pipeline_tests.core.helpers import D, band, holding, run, score

FX = FxRates(usd_to={"BRL": D("5"), "JPY": D("150"), "EUR": D("0.8"), "KWD": D("0.3071")})
USER = uuid.UUID("6f1c0000-0000-4000-8000-000000000001")

times = st.datetimes(
    min_value=datetime(2000, 1, 1),
    max_value=datetime(2100, 1, 1),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-3)), timezone(timedelta(hours=9))]),
)


def _models(result: UserRecommendations, generated_at: datetime, count: int) -> tuple[bytes, bytes]:
    recs, portfolio = cache_payloads(USER, result, generated_at=generated_at, asset_count=count)
    return (
        recs.model_dump_json(by_alias=True).encode(),
        portfolio.model_dump_json(by_alias=True).encode(),
    )


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.integers(0, 10**12), min_size=1, max_size=8),
    points=st.lists(st.integers(-30, 30), min_size=8, max_size=8),
    contribution=st.decimals(0, 10**9, places=2),
    base=st.sampled_from(["USD", "BRL", "JPY", "EUR", "KWD"]),
    generated_at=times,
    priced=st.one_of(st.none(), times),
    version=st.one_of(st.none(), st.integers(1, 10**6)),
)
def test_the_writers_documents_are_the_models_and_pass_the_gate(
    values: list[int],
    points: list[int],
    contribution: Decimal,
    base: str,
    generated_at: datetime,
    priced: datetime | None,
    version: int | None,
) -> None:
    holdings = [holding(f"A{i}", "AB"[i % 2], v) for i, v in enumerate(values)]
    result = run(
        [band("A", 40, 60), band("B", "0.5", "99.9999")],
        holdings,
        [score(f"A{i}", points[i]) for i in range(len(values))],
        contribution=str(contribution),
        base=base,
        fx=FX,
    )
    result = replace(result, criteria_version=version, prices_as_of=priced, rates_as_of=priced)
    recs, portfolio = cache_documents(
        USER, result, generated_at=generated_at, asset_count=len(values)
    )
    want_recs, want_portfolio = _models(result, generated_at, len(values))
    assert orjson.loads(recs) == orjson.loads(want_recs)
    assert orjson.loads(portfolio) == orjson.loads(want_portfolio)
    checked, summary = check_documents(recs, portfolio, str(USER))
    assert checked == orjson.loads(recs) and summary == orjson.loads(portfolio)
