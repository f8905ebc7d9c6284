"""The batch path gives exactly what the one-user path gives (BEHAVIOUR §2-3, issue 3 item 6)."""

from __future__ import annotations

import os
import random
from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight_pipeline.core.batch import Batch, run_batch, score_batch
from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.recommendations import (
    BELOW_MINIMUM,
    ClassSpec,
    HoldingInput,
    recommend,
)
from overnight_pipeline.core.scoring import Rule, score_holdings
from overnight_pipeline.core.vocabulary import METRICS

D = Decimal
FX = FxRates(usd_to={"BRL": D("5.0123"), "JPY": D("151.37"), "EUR": D("0.9213")})
# Few distinct values, written with different exponents, so that rules hit equalities
# (3.1 vs 3.10) and the exact Decimal fallback of the float comparison.
VALUES = [
    D("0"),
    D("3.1"),
    D("3.10"),
    D("-2.5"),
    D("15"),
    D("15.0000"),
    D("0.1"),
    D("1E+3"),
    D("1000.000"),
    D("12345678901234567890.1234567891"),
]
value = st.sampled_from(VALUES) | st.decimals(-100, 100, places=4)
ASSETS = [f"a{i}" for i in range(8)]


@st.composite
def rule_lists(draw, classes: list[str]) -> list[Rule]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["gt", "lt", "gte", "lte", "between", "equals", "exists"]))
        v = None if op == "exists" else draw(value)
        v2 = (
            draw(st.sampled_from([x for x in VALUES if x >= v]) | st.just(v))
            if op == "between"
            else None
        )
        out.append(
            Rule(
                id=f"r{i}",
                asset_class=draw(st.sampled_from(classes)),
                metric=draw(st.sampled_from(METRICS[:4])),
                operator=op,
                value=v,
                value2=v2,
                points=draw(st.integers(-20, 50)),
            )
        )
    return out


@st.composite
def users(draw, index: int):
    n_classes = draw(st.integers(1, 4))
    names = [f"C{i}" for i in range(n_classes)]
    classes = []
    for name in names:
        lo = draw(st.integers(0, 100))
        hi = draw(st.integers(lo, 100))
        classes.append(
            ClassSpec(
                name,
                D(lo),
                D(hi),
                draw(st.none() | st.integers(1, 3)),
                draw(st.none() | st.decimals(0, 300, places=2)),
            )
        )
    picked = draw(st.lists(st.sampled_from(ASSETS), unique=True, max_size=len(ASSETS)))
    holdings = [
        HoldingInput(
            asset_id=a,
            symbol=draw(st.sampled_from(["AAA", "BBB", "CCC", a.upper()])),
            asset_class=draw(st.sampled_from(names)),
            quantity=draw(st.decimals(D("0.001"), 10_000, places=3)),
            currency=draw(
                st.sampled_from(
                    ["USD", "BRL", "JPY", "EUR", "XXX"]
                    if index == 0
                    else ["USD", "BRL", "JPY", "EUR"]
                )
            ),
            price=draw(st.none() | st.decimals(D("0.01"), 5_000, places=2)),
        )
        for a in picked
    ]
    base = draw(st.sampled_from(["USD", "BRL", "JPY"]))
    contribution = draw(st.none() | st.decimals(0, 100_000, places=2))
    if base == "JPY" and contribution is not None:
        contribution = contribution.quantize(D(1))
    return {
        "user_id": f"u{index}",
        "base": base,
        "contribution": contribution,
        "classes": classes,
        "holdings": holdings,
        "rules": draw(rule_lists(names)),
    }


@st.composite
def batches(draw):
    fundamentals = {
        a: {m: draw(st.none() | value) for m in METRICS[:4]}
        for a in ASSETS
        if draw(st.booleans()) or a == "a0"
    }
    return [draw(users(i)) for i in range(draw(st.integers(1, 5)))], fundamentals


def to_batch(user_list, fundamentals) -> Batch:
    def frame(rows, columns):
        return pd.DataFrame(rows, columns=columns, dtype=object)

    return Batch(
        users=frame(
            [(u["user_id"], u["base"], u["contribution"], 1) for u in user_list],
            ["user_id", "base_currency", "contribution", "criteria_version"],
        ),
        classes=frame(
            [(u["user_id"], *c) for u in user_list for c in u["classes"]],
            ["user_id", "name", "target_min", "target_max", "max_assets", "min_allocation_value"],
        ),
        holdings=frame(
            [
                (
                    u["user_id"],
                    h.asset_id,
                    h.symbol,
                    h.asset_class,
                    h.quantity,
                    h.currency,
                    h.price,
                    h.price_as_of,
                )
                for u in user_list
                for h in u["holdings"]
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
        rules=frame(
            [
                (
                    u["user_id"],
                    r.id,
                    r.asset_class,
                    r.metric,
                    r.operator,
                    r.value,
                    r.value2,
                    r.points,
                )
                for u in user_list
                for r in u["rules"]
            ],
            ["user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points"],
        ),
        fundamentals=frame(
            [(a, *[f.get(m) for m in METRICS]) for a, f in fundamentals.items()],
            ["asset_id", *METRICS],
        ).set_index("asset_id"),
    )


def one_user(u, fundamentals):
    scores = score_holdings(
        [(h.asset_id, h.asset_class) for h in u["holdings"]], u["rules"], fundamentals
    )
    try:
        rec = recommend(
            base_currency=u["base"],
            contribution=u["contribution"],
            classes=u["classes"],
            holdings=u["holdings"],
            scores=scores,
            fx=FX,
            criteria_version=1,
        )
    except MissingRateError as exc:
        return scores, exc
    return scores, rec


# BATCH_PROPERTY_EXAMPLES=3000 for a longer run.
@settings(max_examples=int(os.environ.get("BATCH_PROPERTY_EXAMPLES", "300")), deadline=None)
@given(batches())
def test_batch_path_equals_one_user_path(b) -> None:
    user_list, fundamentals = b
    result = run_batch(to_batch(user_list, fundamentals), FX)
    batch_scores = result.scores.asset_scores()
    for u in user_list:
        scores, rec = one_user(u, fundamentals)
        assert batch_scores.get(u["user_id"], {}) == scores
        if isinstance(rec, MissingRateError):
            failure = result.failures[u["user_id"]]
            assert isinstance(failure, MissingRateError)
            assert (failure.source, failure.target) == (rec.source, rec.target)
            assert u["user_id"] not in result.recommendations
        else:
            assert u["user_id"] not in result.failures
            assert result.recommendations[u["user_id"]] == rec
            # The same Decimals, not only equal ones: same digits and exponents.
            assert repr(result.recommendations[u["user_id"]]) == repr(rec)


def test_batch_scores_keep_exactness_where_floats_tie() -> None:
    # 0.1 + 0.2 style traps aside, these two differ beyond float precision.
    big = D("12345678901234567890.1234567891")
    rules = [
        Rule(
            id="gt",
            asset_class="A",
            metric="market_cap",
            operator="gt",
            value=D("12345678901234567890.1234567890"),
            points=5,
        ),
        Rule(
            id="eq",
            asset_class="A",
            metric="pe_ratio",
            operator="equals",
            value=D("3.10"),
            points=7,
        ),
    ]
    u = {
        "user_id": "u",
        "base": "USD",
        "contribution": D(100),
        "classes": [ClassSpec("A", D(0), D(100))],
        "holdings": [HoldingInput("x", "X", "A", D(1), "USD", D(1))],
        "rules": rules,
    }
    fundamentals = {"x": {"market_cap": big, "pe_ratio": D("3.1")}}
    batch = to_batch([u], fundamentals)
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    assert float(big) == float(D("12345678901234567890.1234567890"))
    assert scored.holdings["score"].tolist() == [D("12.0000")]
    assert scored.holdings["top_contributor"].tolist() == ["pe_ratio"]


@pytest.mark.parametrize("currency", ["XXX"])
def test_a_user_without_a_rate_fails_alone_in_the_batch(currency: str) -> None:
    good = {
        "user_id": "good",
        "base": "USD",
        "contribution": D(100),
        "classes": [ClassSpec("A", D(0), D(100))],
        "holdings": [HoldingInput("x", "X", "A", D(1), "USD", D(10))],
        "rules": [Rule(id="r", asset_class="A", metric="pe_ratio", operator="exists", points=1)],
    }
    bad = {
        **good,
        "user_id": "bad",
        "holdings": [HoldingInput("y", "Y", "A", D(1), currency, D(10))],
    }
    result = run_batch(to_batch([bad, good], {"x": {"pe_ratio": D(1)}, "y": {}}), FX)
    assert str(result.failures["bad"]) == "no exchange rate for XXX->USD in the snapshot"
    assert result.recommendations["good"].allocated == D("100.00")


# The batch path and the one-user path -----------------------------------------------------
# The batch prepares its users on arrays and allocates each with the one-user path's own
# exact `allocate`: the results are the same, Decimal for Decimal (digits and exponents).

# Rules that score an asset by which of three metrics it has: 10, 20 and 40 points.
SCORING = [("pe", "pe_ratio", 10), ("roe", "roe", 20), ("pb", "pb_ratio", 40)]
BY_SCORE = {
    10: ("pe_ratio",),
    20: ("roe",),
    30: ("pe_ratio", "roe"),
    40: ("pb_ratio",),
    50: ("pe_ratio", "pb_ratio"),
    60: ("roe", "pb_ratio"),
    70: ("pe_ratio", "roe", "pb_ratio"),
}


def user(uid, classes, holdings, contribution="1000", base="USD", rules=None):
    """A user whose holdings are (symbol, class, value, score[, currency[, price]])."""
    rows, fundamentals = [], {}
    for symbol, cls, value, points, *rest in holdings:
        currency = rest[0] if rest else "USD"
        price = rest[1] if len(rest) > 1 else "1"
        rows.append(
            HoldingInput(
                f"{uid}:{symbol}",
                symbol,
                cls,
                D(value),
                currency,
                None if price is None else D(price),
            )
        )
        fundamentals[f"{uid}:{symbol}"] = {m: D(1) for m in BY_SCORE.get(points, ())}
    if rules is None:
        rules = [
            Rule(id=f"{c.name}-{i}", asset_class=c.name, metric=m, operator="exists", points=p)
            for c in classes
            for i, m, p in SCORING
        ]
    u = {
        "user_id": uid,
        "base": base,
        "contribution": None if contribution is None else D(contribution),
        "classes": classes,
        "holdings": rows,
        "rules": rules,
    }
    return u, fundamentals


def band(name, lo, hi, **kw):
    return ClassSpec(name, D(lo), D(hi), **kw)


def check(*made, failing=()):
    """The batch of these users gives the one-user results; the `failing` users fail in
    both, with the same error."""
    user_list = [u for u, _ in made]
    fundamentals = {a: f for _, fs in made for a, f in fs.items()}
    result = run_batch(to_batch(user_list, fundamentals), FX)
    for u in user_list:
        if u["user_id"] in failing:
            with pytest.raises(ValueError) as raised:
                one_user(u, fundamentals)
            assert str(result.failures[u["user_id"]]) == str(raised.value)
            continue
        _, rec = one_user(u, fundamentals)
        assert repr(result.recommendations[u["user_id"]]) == repr(rec)
    assert set(result.failures) == set(failing)
    return result


def test_common_cases_give_the_one_user_results() -> None:
    result = check(
        # Partial fill: the class furthest below its mid takes everything.
        user(
            "partial",
            [band("A", 40, 60), band("B", 40, 60)],
            [("AAA", "A", 600, 10), ("BBB", "B", 400, 30), ("BB2", "B", 100, 10)],
            "100",
        ),
        # Mids reached, then maxes, then the rest unallocated; JPY has no cents.
        user(
            "jpy",
            [band("A", 20, 30), band("B", 30, 40)],
            [("AAA", "A", 10, 10), ("BBB", "B", 10, 20, "JPY")],
            "7777",
            base="JPY",
        ),
        # No contribution: gaps and values only.
        user("none", [band("A", 40, 60)], [("AAA", "A", 5, 10)], None),
        # Foreign holdings, a class without eligible asset, max_assets, a missing price.
        user(
            "mixed",
            [band("A", 10, 50, max_assets=2), band("B", 30, 70), band("C", 0, 10)],
            [
                ("AAA", "A", "12.5", 10, "BRL"),
                ("AA2", "A", 3, 30, "EUR", "2.25"),
                ("AA3", "A", 7, 70),
                ("BBB", "B", 9, 0),
                ("CCC", "C", 4, 20, "USD", None),
            ],
            "333.33",
        ),
        # Three equal scores: the cent left goes by score then symbol.
        user(
            "thirds",
            [band("A", 100, 100)],
            [("Z", "A", 0, 10), ("Y", "A", 0, 10), ("X", "A", 0, 10)],
            "100",
        ),
    )
    assert result.recommendations["jpy"].unallocated > 0
    assert {r.symbol: r.amount for r in result.recommendations["thirds"].recommendations} == {
        "X": D("33.34"),
        "Y": D("33.33"),
        "Z": D("33.33"),
    }


def test_an_asset_below_the_class_minimum_is_dropped_and_the_split_redone() -> None:
    # docs/ALGORITHM.md §3: 50.00/30.00/20.00, Z's 20 is below 25: 62.50/37.50.
    result = check(
        user(
            "min",
            [band("A", 100, 100, min_allocation_value=D(25))],
            [("X", "A", 0, 50), ("Y", "A", 0, 30), ("Z", "A", 0, 20)],
            "100",
        )
    )
    recs = result.recommendations["min"].recommendations
    assert [(r.symbol, r.amount) for r in recs] == [("X", D("62.50")), ("Y", D("37.50"))]


def test_a_class_below_its_minimum_is_dropped_in_the_batch_too() -> None:
    result = check(
        user(
            "short",
            [band("A", 50, 50, min_allocation_value=D(500)), band("B", 50, 50)],
            [("AAA", "A", 0, 10), ("BBB", "B", 0, 10)],
            "200",
        ),
        user("fine", [band("A", 40, 60)], [("AAA", "A", 5, 10)]),
    )
    assert [c.status for c in result.recommendations["short"].classes] == [BELOW_MINIMUM, None]


def test_a_unit_refused_by_a_cap_goes_to_the_next_remainder() -> None:
    # C1 reaches its max with a remainder that would win a cent it has no room for.
    rules = [
        Rule(id=c, asset_class=c, metric="pe_ratio", operator="exists", points=p)
        for c, p in (("C0", 2), ("C1", 1), ("C2", 7))
    ]
    made = user(
        "capped",
        [band("C0", 1, 6), band("C1", 10, 11), band("C2", 1, 2)],
        [
            ("S00", "C0", 0, 10, "USD", "1.01"),
            ("S01", "C0", 7, 10, "USD", "0.5"),
            ("S02", "C0", 3, 10),
            ("S10", "C1", 7, 10, "USD", "1.01"),
            ("S20", "C2", 333, 10, "USD", "0.5"),
        ],
        rules=rules,
    )
    check(made)


def test_odd_shapes_give_the_one_user_results_or_fail_alone() -> None:
    # A holding of a class the user lacks counts in the total; a contribution far past
    # 28 digits is exact; the same class or asset twice is refused for that user alone.
    result = check(
        user("twice", [band("A", 40, 60), band("A", 10, 20)], [("AAA", "A", 5, 10)]),
        user("stray", [band("A", 40, 60)], [("AAA", "A", 5, 10), ("BBB", "B", 5, 10)]),
        user("huge", [band("A", 40, 60)], [("AAA", "A", 5, 10)], "1E+40"),
        user("fine", [band("A", 40, 60)], [("AAA", "A", 5, 10)]),
        failing={"twice"},
    )
    assert "asset class 'A' appears twice" in str(result.failures["twice"])
    assert result.recommendations["stray"].total_value == D(10)
    huge = result.recommendations["huge"]
    assert sum(r.amount for r in huge.recommendations) + huge.unallocated == D("1E+40")
    dup, fundamentals = user("dup", [band("A", 40, 60)], [("AAA", "A", 5, 10)])
    dup["holdings"] = dup["holdings"] * 2
    check((dup, fundamentals), failing={"dup"})


def test_an_arithmetic_error_fails_only_its_user() -> None:
    bad, f1 = user("bad", [band("A", 40, 60)], [("AAA", "A", 5, 10)])
    bad["contribution"] = D("NaN")
    good, f2 = user("good", [band("A", 40, 60)], [("AAA", "A", 5, 10)])
    result = run_batch(to_batch([bad, good], {**f1, **f2}), FX)
    assert isinstance(result.failures["bad"], ValueError)
    assert "NaN" in str(result.failures["bad"])
    assert repr(result.recommendations["good"]) == repr(one_user(good, {**f1, **f2})[1])


@pytest.mark.parametrize(
    ("field", "bad"),
    [("quantity", D("NaN")), ("price", D("Infinity")), ("quantity", 1.5), ("band", D("sNaN"))],
)
def test_a_value_that_is_not_a_finite_decimal_fails_only_its_user(field, bad) -> None:
    bad_user, f1 = user("bad", [band("A", 40, 60)], [("AAA", "A", 5, 10), ("AA2", "A", 5, 20)])
    if field == "band":
        bad_user["classes"] = [ClassSpec("A", D(40), bad)]
    else:
        bad_user["holdings"][1] = bad_user["holdings"][1]._replace(**{field: bad})
    good, f2 = user("good", [band("A", 40, 60)], [("AAA", "A", 5, 10)])
    result = run_batch(to_batch([bad_user, good], {**f1, **f2}), FX)
    assert set(result.failures) == {"bad"}
    assert "not a finite decimal" in str(result.failures["bad"])
    assert repr(result.recommendations["good"]) == repr(one_user(good, {**f1, **f2})[1])


def random_user(rng: random.Random, i: int):
    names = rng.sample(["A", "B", "C", "D", "E"], rng.randint(1, 5))
    classes = []
    for name in names:
        lo = rng.choice([0, 5, 10, 20, 25, 33])
        classes.append(
            band(
                name,
                lo,
                lo + rng.choice([0, 5, 10, 30]),
                max_assets=rng.choice([None, None, 1, 2, 3]),
                min_allocation_value=rng.choice([None, None, D(5), D("12.5"), D(100)]),
            )
        )
    holdings = [
        (
            f"S{j}",
            rng.choice(names),
            rng.choice(["1", "7", "12.25", "40", "333"]),
            rng.choice([0, 10, 20, 30, 40, 50, 60, 70]),
            rng.choice(["USD", "USD", "BRL", "EUR", "JPY"]),
            rng.choice(
                ["1", "0.5", "9.99", "101.01", None]
                if rng.random() < 0.1
                else ["1", "0.5", "9.99", "101.01"]
            ),
        )
        for j in range(rng.randint(0, 12))
    ]
    base = rng.choice(["USD", "USD", "BRL", "JPY"])
    contribution = rng.choice([None, "0", "10", "250", "1000", "12345.67", "100000"])
    if base == "JPY" and contribution is not None:
        contribution = str(D(contribution).quantize(D(1)))
    return user(f"r{i}", classes, holdings, contribution, base)


def test_many_random_users_give_the_one_user_results() -> None:
    rng = random.Random(20261130)
    made = [random_user(rng, i) for i in range(400)]
    user_list = [u for u, _ in made]
    fundamentals = {a: f for _, fs in made for a, f in fs.items()}
    result = run_batch(to_batch(user_list, fundamentals), FX)
    for u in user_list:
        _, rec = one_user(u, fundamentals)
        assert repr(result.recommendations[u["user_id"]]) == repr(rec)
    # The random users reach the rare branches too.
    statuses = {c.status for r in result.recommendations.values() for c in r.classes}
    assert BELOW_MINIMUM in statuses
