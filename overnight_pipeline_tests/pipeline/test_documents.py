"""The pipeline's JSON-text documents equal the dict documents of `core.captured_writer`."""

from __future__ import annotations

from datetime import UTC, date, datetime

import orjson
from hypothesis import given, settings

from overnight_pipeline.core.batch import score_batch
from overnight_pipeline.core.captured_writer import capture_json
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.scored import full_scores, score_json
from overnight_pipeline.core.scoring import replay
from overnight_pipeline_tests.core.documents import capture, compact_scores, score_documents
from overnight_pipeline_tests.core.test_batch import FX, batches, to_batch

DAY = date(2026, 11, 30)
FX_AT = FxRates(usd_to=FX.usd_to, as_of=datetime(2026, 11, 30, 6, tzinfo=UTC), stale=True)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_json_text_documents_equal_the_dict_documents(b) -> None:
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    versions = {u["user_id"]: i + 1 for i, u in enumerate(user_list)}
    markets = [f"M{i % 3}" for i in range(len(batch.holdings))]
    docs = capture(
        batch,
        FX_AT,
        market="NYSE",
        market_date=DAY,
        criteria_versions=versions,
        holding_markets=markets,
    )
    texts = capture_json(
        batch,
        FX_AT,
        market="NYSE",
        market_date=DAY,
        criteria_versions=versions,
        holding_markets=markets,
    )
    assert texts.keys() == docs.keys()
    for uid, doc in docs.items():
        text, holdings = texts[uid]
        assert orjson.loads(text) == doc
        assert holdings == len(doc["holdings"])

    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    dicts = score_documents(scored)
    out = score_json(scored, versions)
    two = score_json(scored, versions, format=2)
    old = score_json(scored, versions, format=1)
    by_user: dict[str, list[dict]] = {}
    for uid, doc in zip(scored.holdings["user_id"], dicts, strict=True):
        by_user.setdefault(uid, []).append(doc)
    assert out.payloads.keys() == old.payloads.keys() == by_user.keys()
    for uid, scores in by_user.items():
        assert out.payloads[uid] == orjson.dumps(compact_scores(versions[uid], scores)).decode()
        assert orjson.loads(two.payloads[uid]) == compact_scores(versions[uid], scores, format=2)
        assert orjson.loads(old.payloads[uid]) == {
            "criteriaVersion": versions[uid],
            "scores": scores,
        }
        # What the pipeline writes is what `replay` computes from what it captured, and
        # the full view (actualValue included) comes back from it.
        captured = orjson.loads(texts[uid][0])
        replayed = replay(captured)
        assert [s.to_json() for s in replayed.values()] == scores
        assert full_scores(orjson.loads(out.payloads[uid]), captured) == replayed
        assert full_scores(orjson.loads(two.payloads[uid]), captured) == replayed
    assert out.score == old.score == [d["score"] for d in dicts]
    assert out.max_possible_score == old.max_possible_score
    assert out.score == [d["score"] for d in dicts]
    assert out.max_possible_score == [d["maxPossibleScore"] for d in dicts]
    assert [orjson.loads(s) for s in out.summary] == [
        {"criteriaCount": d["criteriaCount"], "topContributor": d["topContributor"]} for d in dicts
    ]


def test_no_holdings_and_unusual_strings() -> None:
    """Quotes, backslashes and non-ASCII in names survive; a user without holdings has
    empty lists."""
    from decimal import Decimal as D

    import pandas as pd

    from overnight_pipeline.core.batch import Batch

    def frame(rows, columns):
        return pd.DataFrame(rows, columns=columns, dtype=object)

    batch = Batch(
        users=frame(
            [("u1", "USD", D("10.50"), 2), ("u2", "EUR", None, None)],
            ["user_id", "base_currency", "contribution", "criteria_version"],
        ),
        classes=frame(
            [("u1", 'Cl"ass\\ é\t', D("0"), D("100"), None, D("5"))],
            ["user_id", "name", "target_min", "target_max", "max_assets", "min_allocation_value"],
        ),
        holdings=frame(
            [("u1", "a1", 'S"Y\\M', 'Cl"ass\\ é\t', D("1E+2"), "USD", None, None)],
            [
                "user_id",
                "asset_id",
                "symbol",
                "asset_class",
                "quantity",
                "currency",
                "price",
                "price_as_of",
            ],
        ),
        rules=frame(
            [("u1", 'r"1', 'Cl"ass\\ é\t', "pe_ratio", "gt", D("3.10"), None, 5)],
            ["user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points"],
        ),
        fundamentals=frame(
            [("a1", *([D("4")] * 15))],
            [
                "asset_id",
                *__import__("overnight_pipeline.core.vocabulary", fromlist=["METRICS"]).METRICS,
            ],
        ).set_index("asset_id"),
    )
    fx = FxRates(usd_to={"EUR": D("0.9")})
    versions = {"u1": 2, "u2": None}
    docs = capture(batch, fx, market="NYSE", market_date=DAY, criteria_versions=versions)
    texts = capture_json(batch, fx, market="NYSE", market_date=DAY, criteria_versions=versions)
    assert {u: orjson.loads(t) for u, (t, _) in texts.items()} == docs
    assert texts["u2"][1] == 0
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    out = score_json(scored, versions)
    assert orjson.loads(out.payloads["u1"]) == compact_scores(2, score_documents(scored))
    assert "u2" not in out.payloads
    old = score_json(scored, versions, format=1)
    assert orjson.loads(old.payloads["u1"])["scores"] == score_documents(scored)
