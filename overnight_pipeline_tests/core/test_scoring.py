from __future__ import annotations

from decimal import Decimal

import pytest

from overnight_pipeline.core.scoring import (
    MISSING_FUNDAMENTAL,
    CriteriaError,
    Rule,
    replay,
    rules_document,
    score_asset,
    score_holdings,
    validate_criteria,
)

D = Decimal


def rule(
    op: str,
    value: str | None = None,
    value2: str | None = None,
    points: int = 10,
    metric: str = "pe_ratio",
    rid: str = "r",
) -> Rule:
    return Rule(
        id=rid,
        asset_class="A",
        metric=metric,
        operator=op,
        value=value,
        value2=value2,
        points=points,
    )


@pytest.mark.parametrize(
    ("op", "value", "value2", "actual", "matched"),
    [
        ("gt", "10", None, "10", False),
        ("gt", "10", None, "10.0001", True),
        ("lt", "10", None, "10", False),
        ("lt", "10", None, "9.9999", True),
        ("gte", "10", None, "10", True),
        ("gte", "10", None, "9.9999", False),
        ("lte", "10", None, "10", True),
        ("lte", "10", None, "10.0001", False),
        ("between", "5", "15", "5", True),
        ("between", "5", "15", "15", True),
        ("between", "5", "15", "4.9999", False),
        ("between", "5", "15", "15.0001", False),
        ("equals", "3.10", None, "3.1", True),
        ("equals", "3.1", None, "3.10000", True),
        ("equals", "3.1", None, "3.11", False),
        ("exists", None, None, "0", True),
    ],
)
def test_each_operator_at_its_boundary(op, value, value2, actual, matched) -> None:
    result = score_asset("x", [rule(op, value, value2)], {"pe_ratio": D(actual)})
    (outcome,) = result.breakdown
    assert outcome.matched is matched
    assert outcome.points_awarded == (10 if matched else 0)
    assert outcome.skipped_reason is None


def test_exists_on_null_is_not_matched_and_not_skipped() -> None:
    (outcome,) = score_asset("x", [rule("exists")], {"pe_ratio": None}).breakdown
    assert (outcome.matched, outcome.skipped_reason, outcome.actual_value) == (False, None, None)


def test_missing_fundamental_is_skipped_not_unmatched() -> None:
    result = score_asset("x", [rule("gt", "1"), rule("gt", "100", rid="s")], {"pe_ratio": None})
    assert [o.skipped_reason for o in result.breakdown] == [MISSING_FUNDAMENTAL] * 2
    present = score_asset("x", [rule("gt", "100")], {"pe_ratio": D(5)})
    assert present.breakdown[0].skipped_reason is None and not present.breakdown[0].matched


def test_score_sums_points_including_negative_to_four_places() -> None:
    rules = [
        rule("gt", "1", points=30, rid="a"),
        rule("lt", "100", points=-45, rid="b", metric="roe"),
        rule("gt", "1000", points=20, rid="c"),
    ]
    result = score_asset("x", rules, {"pe_ratio": D(5), "roe": D(12)})
    assert result.score == D("-15.0000") and str(result.score) == "-15.0000"
    assert result.max_possible_score == D("50.0000")
    assert result.criteria_count == 3
    assert result.top_contributor == "pe_ratio"


def test_top_contributor_ties_go_to_the_first_rule() -> None:
    rules = [rule("gt", "1", points=20, metric="roe", rid="a"), rule("gt", "1", points=20, rid="b")]
    assert score_asset("x", rules, {"pe_ratio": D(5), "roe": D(5)}).top_contributor == "roe"


def test_top_contributor_is_null_when_nothing_matched() -> None:
    assert score_asset("x", [rule("gt", "100")], {"pe_ratio": D(5)}).top_contributor is None


def test_an_asset_whose_class_has_no_rules_scores_zero() -> None:
    scores = score_holdings([("x", "Bonds")], [rule("gt", "1")], {"x": {"pe_ratio": D(5)}})
    assert (
        scores["x"].score == 0
        and scores["x"].breakdown == ()
        and scores["x"].max_possible_score == 0
    )


def test_invalid_criteria_list_every_problem_by_rule() -> None:
    doc = [
        {
            "id": "a",
            "assetClass": "A",
            "metric": "pe_ratio",
            "operator": "between",
            "value": "9",
            "value2": "3",
            "points": 5,
        },
        {
            "id": "b",
            "assetClass": "A",
            "metric": "vibes",
            "operator": "gt",
            "value": "1",
            "points": 5,
        },
        {
            "id": "a",
            "assetClass": "A",
            "metric": "roe",
            "operator": "gt",
            "value": 1.5,
            "points": 500,
        },
    ]
    with pytest.raises(CriteriaError) as info:
        validate_criteria(doc)
    paths = [p for p, _, _ in info.value.errors]
    assert paths == [
        "criteria.0",
        "criteria.1.metric",
        "criteria.2.value",
        "criteria.2.points",
        "criteria.2.id",
    ]


def test_replay_reproduces_scores_from_captured_inputs() -> None:
    rules = [
        rule("gt", "1", points=30, rid="a"),
        rule("between", "0.5", "2", points=-5, metric="roe", rid="b"),
    ]
    fundamentals = {
        "x": {"pe_ratio": D("5.5"), "roe": None},
        "y": {"pe_ratio": D("0.5"), "roe": D("1.25")},
    }
    scores = score_holdings([("x", "A"), ("y", "A")], rules, fundamentals)
    captured = {
        "criteria": {"version": 3, "rules": rules_document(rules)},
        "holdings": [{"assetId": "x", "assetClass": "A"}, {"assetId": "y", "assetClass": "A"}],
        "fundamentals": {
            k: {m: None if v is None else format(v, "f") for m, v in f.items()}
            for k, f in fundamentals.items()
        },
    }
    assert replay(captured) == scores
