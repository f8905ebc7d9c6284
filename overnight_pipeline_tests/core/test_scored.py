"""`SCORES_COMPUTED`: format 3 as written, formats 2 and 1 still read (and written for the
replay), the full per-rule view (actualValue, and format 3's maximum and top contributor,
included) put back from the events and the snapshots, garbled payloads named."""

from __future__ import annotations

import copy
import dataclasses
import re
from datetime import UTC, date, datetime
from decimal import Decimal as D
from typing import Any

import orjson
import pandas as pd
import pytest
from hypothesis import given, settings

from overnight_pipeline.core.batch import Batch, score_batch
from overnight_pipeline.core.captured_text import referencing_texts
from overnight_pipeline.core.captured_writer import capture_json
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.scored import (
    ScoresPayloadError,
    full_scores,
    no_scores,
    payload_format,
    same_document,
    score_json,
)
from overnight_pipeline.core.scoring import replay
from overnight_pipeline.core.snapshots import asset_positions, criteria_snapshots
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline_tests.core.test_batch import FX, batches, to_batch
from overnight_pipeline_tests.core.test_captured import _one_quote_per_asset, _snapshot_of

DAY = date(2026, 11, 30)
FX_AT = FxRates(usd_to=FX.usd_to, as_of=datetime(2026, 11, 30, 6, tzinfo=UTC), stale=False)
A1 = "6f1c0000-0000-4000-8000-0000000000a1"
A2 = "6f1c0000-0000-4000-8000-0000000000a2"
A3 = "6f1c0000-0000-4000-8000-0000000000a3"


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns, dtype=object)


def known_batch() -> Batch:
    """One user, three holdings: a rule matched, one not, an `exists` on a null, a skipped
    rule, and a class without rules."""
    fundamentals = {
        A1: {"dividend_yield": D("4.50"), "pe_ratio": D("20")},
        A2: {"pe_ratio": D("10"), "roe": D("0.15")},
        A3: {"dividend_yield": D("2")},
    }
    return Batch(
        users=_frame(
            [("u1", "USD", D("100"), 3)],
            ["user_id", "base_currency", "contribution", "criteria_version"],
        ),
        classes=_frame(
            [
                ("u1", "Stocks", D("50"), D("80"), None, None),
                ("u1", "Bonds", D("20"), D("50"), None, None),
            ],
            ["user_id", "name", "target_min", "target_max", "max_assets", "min_allocation_value"],
        ),
        holdings=_frame(
            [
                ("u1", A1, "AAA", "Stocks", D("2"), "USD", D("10.00"), None),
                ("u1", A2, "BBB", "Stocks", D("1"), "USD", D("20.00"), None),
                ("u1", A3, "CCC", "Bonds", D("5"), "USD", D("30.00"), None),
            ],
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
        rules=_frame(
            [
                ("u1", "dy", "Stocks", "dividend_yield", "gt", D("3"), None, 10),
                ("u1", "pe", "Stocks", "pe_ratio", "lt", D("15"), None, 5),
                ("u1", "roe", "Stocks", "roe", "exists", None, None, -2),
            ],
            ["user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points"],
        ),
        fundamentals=_frame(
            [(a, *[f.get(m) for m in METRICS]) for a, f in fundamentals.items()],
            ["asset_id", *METRICS],
        ).set_index("asset_id"),
    )


KNOWN = {
    "format": 2,
    "criteriaVersion": 3,
    # Row i is holding i of INPUTS_CAPTURED (A1, A2, A3): no asset id here.
    "columns": ["score", "maxPossibleScore", "criteriaCount", "topContributor", "breakdown"],
    "breakdownColumns": ["criterionId", "matched", "pointsAwarded", "skippedReason"],
    "scores": [
        [
            "10.0000",
            "15.0000",
            3,
            "dividend_yield",
            [["dy", True, 10, None], ["pe", False, 0, None], ["roe", False, 0, None]],
        ],
        [
            "3.0000",
            "15.0000",
            3,
            "pe_ratio",
            [
                ["dy", False, 0, "missing_fundamental"],
                ["pe", True, 5, None],
                ["roe", True, -2, None],
            ],
        ],
        ["0.0000", "0.0000", 0, None, []],
    ],
}


# The same calculation in format 3: each holding's score and breakdown, nothing derived.
KNOWN_3: dict[str, Any] = {
    "format": 3,
    "scores": [
        ["10.0000", [["dy", True, 10, None], ["pe", False, 0, None], ["roe", False, 0, None]]],
        [
            "3.0000",
            [
                ["dy", False, 0, "missing_fundamental"],
                ["pe", True, 5, None],
                ["roe", True, -2, None],
            ],
        ],
        ["0.0000", []],
    ],
}


def _known_scores(fmt: int = 2) -> tuple[Any, dict[str, Any]]:
    batch = known_batch()
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    texts = capture_json(batch, FX_AT, market="NYSE", market_date=DAY, criteria_versions={"u1": 3})
    return score_json(scored, {"u1": 3}, format=fmt), orjson.loads(texts["u1"][0])


def test_format_3_of_a_known_batch_is_exactly_this_document() -> None:
    out, captured = _known_scores(3)
    assert out.payloads == {"u1": orjson.dumps(KNOWN_3).decode()}
    assert out.payloads["u1"] == (
        '{"format":3,"scores":[["10.0000",[["dy",true,10,null],["pe",false,0,null],'
        '["roe",false,0,null]]],["3.0000",[["dy",false,0,"missing_fundamental"],'
        '["pe",true,5,null],["roe",true,-2,null]]],["0.0000",[]]]}'
    )
    assert score_json(*_scored_known()).payloads == out.payloads  # the format written
    # What format 2 said besides is derived again: the same full view from either.
    assert full_scores(KNOWN_3, captured) == full_scores(KNOWN, captured)
    assert out.max_possible_score == ["15.0000", "15.0000", "0.0000"]


def test_format_2_of_a_known_batch_is_exactly_this_document() -> None:
    out, _ = _known_scores()
    assert out.payloads == {"u1": orjson.dumps(KNOWN).decode()}
    assert out.payloads["u1"].startswith(
        '{"format":2,"criteriaVersion":3,"columns":["score","maxPossibleScore",'
    )
    # What asset_scores keeps, per holding row.
    assert out.score == ["10.0000", "3.0000", "0.0000"]
    assert out.max_possible_score == ["15.0000", "15.0000", "0.0000"]
    assert [orjson.loads(s) for s in out.summary] == [
        {"criteriaCount": 3, "topContributor": "dividend_yield"},
        {"criteriaCount": 3, "topContributor": "pe_ratio"},
        {"criteriaCount": 0, "topContributor": None},
    ]


def test_the_full_view_of_the_known_batch_has_every_actual_value_back() -> None:
    out, captured = _known_scores()
    full = [s.to_json() for s in full_scores(orjson.loads(out.payloads["u1"]), captured).values()]
    assert full[0]["breakdown"] == [
        {"criterionId": "dy", "matched": True, "pointsAwarded": 10, "actualValue": "4.50",
         "skippedReason": None},
        {"criterionId": "pe", "matched": False, "pointsAwarded": 0, "actualValue": "20",
         "skippedReason": None},
        {"criterionId": "roe", "matched": False, "pointsAwarded": 0, "actualValue": None,
         "skippedReason": None},
    ]  # fmt: skip
    assert full[1]["breakdown"][0] == {
        "criterionId": "dy",
        "matched": False,
        "pointsAwarded": 0,
        "actualValue": None,
        "skippedReason": "missing_fundamental",
    }
    assert full[1]["breakdown"][2]["actualValue"] == "0.15"
    assert orjson.loads(score_json(*_scored_known(), format=1).payloads["u1"])["scores"] == full


def _scored_known() -> tuple[Any, dict[str, int]]:
    batch = known_batch()
    return score_batch(batch.holdings, batch.rules, batch.fundamentals), {"u1": 3}


@settings(max_examples=150, deadline=None)
@given(batches())
def test_the_full_view_from_format_2_and_the_snapshots_is_what_format_1_held(b) -> None:
    """No audit information is lost: for the same calculation, format 2 with the user's
    INPUTS_CAPTURED (each of its formats) and the snapshots it references gives back every
    format-1 entry, actualValue included, and equals what `replay` computes from the same
    inputs."""
    user_list, fundamentals = b
    batch = _one_quote_per_asset(to_batch(user_list, fundamentals))
    batch.holdings["price_as_of"] = pd.Series(
        [None if p is None else FX_AT.as_of for p in batch.holdings["price"]], dtype=object
    )
    versions = {u["user_id"]: i + 1 for i, u in enumerate(user_list)}
    markets = ["NYSE"] * len(batch.holdings)
    key, snapshot = _snapshot_of(batch, FX_AT, markets)
    criteria_keys, criteria = criteria_snapshots(batch)
    # As the database gives them back.
    shared = orjson.loads(orjson.dumps({key: snapshot, **criteria}))
    common = {"market": "NYSE", "market_date": DAY, "criteria_versions": versions}
    captured = {
        1: capture_json(batch, FX_AT, holding_markets=markets, **common),
        2: capture_json(batch, FX_AT, holding_markets=markets, snapshot=key, **common),
        3: referencing_texts(
            batch,
            market="NYSE",
            market_date=DAY,
            criteria_versions=versions,
            snapshot=key,
            criteria=criteria_keys,
        ),
        # What the pipeline writes: the snapshot's asset positions given.
        4: capture_json(
            batch,
            FX_AT,
            holding_markets=markets,
            snapshot=key,
            criteria=criteria_keys,
            positions=asset_positions(snapshot),
            **common,
        ),
    }
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    new, old = score_json(scored, versions), score_json(scored, versions, format=1)
    two = score_json(scored, versions, format=2)
    assert new.payloads.keys() == old.payloads.keys() == two.payloads.keys()
    assert (new.score, new.max_possible_score, new.summary) == (
        old.score,
        old.max_possible_score,
        old.summary,
    )
    for uid, text in new.payloads.items():
        payload, before = orjson.loads(text), orjson.loads(old.payloads[uid])
        format_2 = orjson.loads(two.payloads[uid])
        assert payload_format(payload) == 3 and payload_format(before) == 1
        assert format_2["criteriaVersion"] == before["criteriaVersion"] == versions[uid]
        expected = replay(orjson.loads(captured[1][uid][0]))
        assert [s.to_json() for s in expected.values()] == before["scores"]
        for fmt, texts in captured.items():
            doc = orjson.loads(texts[uid][0])
            assert doc.get("format", 1) == fmt
            full = full_scores(payload, doc, shared)
            assert [s.to_json() for s in full.values()] == before["scores"]
            assert full == expected == full_scores(before, doc, shared)
            assert full == full_scores(format_2, doc, shared)


@settings(max_examples=50, deadline=None)
@given(batches())
def test_a_users_rows_apart_give_the_same_documents(b) -> None:
    """Users whose holding rows interleave get the documents of the same rows put together
    (each user's rows in their order)."""
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    versions = {u["user_id"]: 1 for u in user_list}
    h = batch.holdings
    # Every other row moved to the end: users interleave.
    apart = h.iloc[[*range(0, len(h), 2), *range(1, len(h), 2)]].reset_index(drop=True)
    together = apart.sort_values("user_id", kind="stable")
    moved = score_batch(apart, batch.rules, batch.fundamentals)
    scored = score_batch(together.reset_index(drop=True), batch.rules, batch.fundamentals)
    back = together.index.tolist()  # row i of `together` is row back[i] of `apart`
    for fmt in (1, 2, 3):
        expected, out = (
            score_json(scored, versions, format=fmt),
            score_json(moved, versions, format=fmt),
        )
        assert out.payloads == expected.payloads
        assert [out.score[i] for i in back] == expected.score
        assert [out.summary[i] for i in back] == expected.summary


@settings(max_examples=50, deadline=None)
@given(batches())
def test_format_3_made_for_the_batch_is_what_the_user_by_user_path_writes(b) -> None:
    """The batch's documents assembled from fragments (`core.scored_text`) are byte for byte
    those of the user-by-user path, which columns of other types take (here: matched as
    objects, points as objects)."""
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    versions = {u["user_id"]: 1 for u in user_list}
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    out = score_json(scored, versions)
    for column in ("matched", "points_awarded"):
        plain = dataclasses.replace(scored, breakdown=scored.breakdown.astype({column: object}))
        assert score_json(plain, versions) == out
    assert set(out.payloads) == set(scored.holdings["user_id"])


def test_a_user_without_holdings_has_an_empty_document_in_each_format() -> None:
    assert no_scores(4) == {"format": 3, "scores": []} and payload_format(no_scores(4)) == 3
    assert no_scores(4, format=2)["scores"] == [] and payload_format(no_scores(4, format=2)) == 2
    assert no_scores(None, format=1) == {"criteriaVersion": None, "scores": []}
    with pytest.raises(ValueError, match="format"):
        score_json(*_scored_known(), format=4)


def test_same_document_counts_types_not_key_order() -> None:
    assert same_document({"a": 1, "b": [True]}, {"b": [True], "a": 1})
    assert not same_document({"a": [True]}, {"a": [1]})
    assert not same_document({"a": 5}, {"a": 5.0})
    assert not same_document({"a": 2**70}, {"a": 0})


def _set(path: tuple[Any, ...], value: Any) -> Any:
    def change(doc: dict[str, Any]) -> dict[str, Any]:
        doc = copy.deepcopy(doc)
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        return doc

    return change


GARBLED = {
    "not an object": (lambda d: [d], "payload"),
    "unknown format": (_set(("format",), 4), "format"),
    "format true": (_set(("format",), True), "format"),
    "columns reordered": (
        _set(("columns",), ["maxPossibleScore", "score", *KNOWN["columns"][2:]]),
        "columns",
    ),
    "an assetId column": (_set(("columns",), ["assetId", *KNOWN["columns"]]), "columns"),
    "actualValue column": (
        _set(("breakdownColumns",), [*KNOWN["breakdownColumns"], "actualValue"]),
        "breakdownColumns",
    ),
    "scores not a list": (_set(("scores",), {"a": 1}), "scores"),
    "a row per holding": (lambda d: {**d, "scores": d["scores"][:2]}, "scores"),
    "short row": (_set(("scores", 1), ["3.0000"]), "scores[1]"),
    "score not a decimal": (_set(("scores", 0, 0), "ten"), "scores[0].score"),
    "score infinite": (_set(("scores", 0, 0), "Infinity"), "scores[0].score"),
    "score a float": (_set(("scores", 0, 0), 10.0), "scores[0].score"),
    "max null": (_set(("scores", 2, 1), None), "scores[2].maxPossibleScore"),
    "count a string": (_set(("scores", 0, 2), "3"), "scores[0].criteriaCount"),
    "count not the rows": (_set(("scores", 0, 2), 2), "scores[0].criteriaCount"),
    "top a number": (_set(("scores", 0, 3), 1), "scores[0].topContributor"),
    "breakdown a string": (_set(("scores", 1, 4), "dy,pe"), "scores[1].breakdown"),
    "rule row short": (_set(("scores", 1, 4, 2), ["roe", True]), "scores[1].breakdown[2]"),
    "unknown rule": (_set(("scores", 1, 4, 0, 0), "nope"), "scores[1].breakdown[0].criterionId"),
    "matched 1": (_set(("scores", 0, 4, 0, 1), 1), "scores[0].breakdown[0].matched"),
    "points text": (_set(("scores", 0, 4, 0, 2), "10"), "scores[0].breakdown[0].pointsAwarded"),
    "points true": (_set(("scores", 0, 4, 1, 2), True), "scores[0].breakdown[1].pointsAwarded"),
    "reason a number": (_set(("scores", 1, 4, 0, 3), 0), "scores[1].breakdown[0].skippedReason"),
}


@pytest.mark.parametrize(("garble", "field"), GARBLED.values(), ids=GARBLED.keys())
def test_a_garbled_payload_is_refused_naming_the_field(garble: Any, field: str) -> None:
    _, captured = _known_scores()
    assert full_scores(KNOWN, captured)  # the document itself is read
    with pytest.raises(ScoresPayloadError, match=re.escape(f"SCORES_COMPUTED {field}: ")) as info:
        full_scores(garble(KNOWN), captured)
    assert info.value.field == field


GARBLED_3 = {
    "a row per holding": (lambda d: {**d, "scores": d["scores"][:2]}, "scores"),
    "format 2's row": (_set(("scores", 0), ["10.0000", "15.0000", 3, "dy", []]), "scores[0]"),
    "score not a decimal": (_set(("scores", 0, 0), "ten"), "scores[0].score"),
    "breakdown a string": (_set(("scores", 1, 1), "dy,pe"), "scores[1].breakdown"),
    "rule row short": (_set(("scores", 1, 1, 2), ["roe", True]), "scores[1].breakdown[2]"),
    "unknown rule": (_set(("scores", 1, 1, 0, 0), "nope"), "scores[1].breakdown[0].criterionId"),
    "matched 1": (_set(("scores", 0, 1, 0, 1), 1), "scores[0].breakdown[0].matched"),
}


@pytest.mark.parametrize(("garble", "field"), GARBLED_3.values(), ids=GARBLED_3.keys())
def test_a_garbled_format_3_payload_is_refused_naming_the_field(garble: Any, field: str) -> None:
    _, captured = _known_scores()
    assert full_scores(KNOWN_3, captured)
    with pytest.raises(ScoresPayloadError, match=re.escape(f"SCORES_COMPUTED {field}: ")) as info:
        full_scores(garble(KNOWN_3), captured)
    assert info.value.field == field


def test_a_garbled_format_1_entry_is_refused_naming_the_field() -> None:
    _, captured = _known_scores()
    old = orjson.loads(score_json(*_scored_known(), format=1).payloads["u1"])
    assert [s.to_json() for s in full_scores(old, captured).values()] == old["scores"]
    for path, value, field in [
        (("scores", 0, "breakdown", 1, "actualValue"), "twenty", "breakdown[1].actualValue"),
        (("scores", 1), "x", "scores[1]"),
        (("scores", 0, "breakdown", 0), ["dy", True, 10, None], "scores[0].breakdown[0]"),
        (("scores", 0, "score"), None, "scores[0].score"),
    ]:
        with pytest.raises(ScoresPayloadError, match=re.escape(field)):
            full_scores(_set(path, value)(old), captured)


def test_the_full_view_needs_the_snapshots_its_inputs_reference() -> None:
    with pytest.raises(ValueError, match="needs the snapshot abc"):
        full_scores(KNOWN, {"format": 2, "snapshot": "abc", "criteria": {"rules": []}})
    format_3 = {"format": 3, "snapshot": "abc", "criteria": {"version": 1, "snapshot": "def"}}
    with pytest.raises(ValueError, match="needs the snapshot def"):
        full_scores(KNOWN, format_3, {"abc": {}})
