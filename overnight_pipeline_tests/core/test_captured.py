"""INPUTS_CAPTURED round trip: what the pipeline recommends from is what it captured."""

from __future__ import annotations

from datetime import UTC, date, datetime

from hypothesis import given, settings

from overnight_pipeline.core.batch import run_batch, score_batch
from overnight_pipeline.core.captured import batch_from_captured
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.scoring import replay
from overnight_pipeline_tests.core.documents import capture, score_documents
from overnight_pipeline_tests.core.test_batch import FX, batches, to_batch

DAY = date(2026, 11, 30)
FX_AT = FxRates(usd_to=FX.usd_to, as_of=datetime(2026, 11, 30, 6, tzinfo=UTC), stale=True)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_recommending_from_captured_inputs_gives_the_same_result(b) -> None:
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    docs = capture(
        batch,
        FX_AT,
        market="NYSE",
        market_date=DAY,
        criteria_versions={u["user_id"]: 1 for u in user_list},
    )
    again, fx = batch_from_captured(list(docs.items()))
    assert fx.stale and fx.as_of == FX_AT.as_of
    direct, replayed = run_batch(batch, FX_AT), run_batch(again, fx)
    assert replayed.recommendations == direct.recommendations
    assert {u: (e.source, e.target) for u, e in replayed.failures.items()} == {
        u: (e.source, e.target) for u, e in direct.failures.items()
    }
    # The scores computed by the batch path are what `replay` gets from each document.
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    by_user: dict[str, list[dict]] = {}
    for uid, doc in zip(scored.holdings["user_id"], score_documents(scored), strict=True):
        by_user.setdefault(uid, []).append(doc)
    for uid, doc in docs.items():
        assert [s.to_json() for s in replay(doc).values()] == by_user.get(uid, [])
