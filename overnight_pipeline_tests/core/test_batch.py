"""The batch path gives exactly what the one-user path gives (SPEC §2-3, issue 3 item 6)."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from overnight_pipeline.core.batch import Batch, run_batch, score_batch
from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.recommendations import ClassSpec, HoldingInput, recommend
from overnight_pipeline.core.scoring import Rule, score_holdings
from overnight_pipeline.core.vocabulary import METRICS

D = Decimal
FX = FxRates(usd_to={"BRL": D("5.0123"), "JPY": D("151.37"), "EUR": D("0.9213")})
# Few distinct values, written with different exponents, so that rules hit equalities
# (3.1 vs 3.10) and the exact Decimal fallback of the float comparison.
VALUES = [D("0"), D("3.1"), D("3.10"), D("-2.5"), D("15"), D("15.0000"), D("0.1"),
          D("1E+3"), D("1000.000"), D("12345678901234567890.1234567891")]  # fmt: skip
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
        out.append(Rule(id=f"r{i}", asset_class=draw(st.sampled_from(classes)),
                        metric=draw(st.sampled_from(METRICS[:4])), operator=op, value=v,
                        value2=v2, points=draw(st.integers(-20, 50))))  # fmt: skip
    return out


@st.composite
def users(draw, index: int):
    n_classes = draw(st.integers(1, 4))
    names = [f"C{i}" for i in range(n_classes)]
    classes = []
    for name in names:
        lo = draw(st.integers(0, 100))
        hi = draw(st.integers(lo, 100))
        classes.append(ClassSpec(name, D(lo), D(hi), draw(st.none() | st.integers(1, 3)),
                                 draw(st.none() | st.decimals(0, 300, places=2))))  # fmt: skip
    picked = draw(st.lists(st.sampled_from(ASSETS), unique=True, max_size=len(ASSETS)))
    holdings = [
        HoldingInput(
            asset_id=a, symbol=draw(st.sampled_from(["AAA", "BBB", "CCC", a.upper()])),
            asset_class=draw(st.sampled_from(names)),
            quantity=draw(st.decimals(D("0.001"), 10_000, places=3)),
            currency=draw(st.sampled_from(["USD", "BRL", "JPY", "EUR", "XXX"]
                                          if index == 0 else ["USD", "BRL", "JPY", "EUR"])),
            price=draw(st.none() | st.decimals(D("0.01"), 5_000, places=2)),
        )
        for a in picked
    ]  # fmt: skip
    base = draw(st.sampled_from(["USD", "BRL", "JPY"]))
    contribution = draw(st.none() | st.decimals(0, 100_000, places=2))
    if base == "JPY" and contribution is not None:
        contribution = contribution.quantize(D(1))
    return {"user_id": f"u{index}", "base": base, "contribution": contribution,
            "classes": classes, "holdings": holdings, "rules": draw(rule_lists(names))}  # fmt: skip


@st.composite
def batches(draw):
    fundamentals = {
        a: {m: draw(st.none() | value) for m in METRICS[:4]}
        for a in ASSETS if draw(st.booleans()) or a == "a0"
    }  # fmt: skip
    return [draw(users(i)) for i in range(draw(st.integers(1, 5)))], fundamentals


def to_batch(user_list, fundamentals) -> Batch:
    def frame(rows, columns):
        return pd.DataFrame(rows, columns=columns, dtype=object)

    return Batch(
        users=frame([(u["user_id"], u["base"], u["contribution"], 1) for u in user_list],
                    ["user_id", "base_currency", "contribution", "criteria_version"]),
        classes=frame([(u["user_id"], *c) for u in user_list for c in u["classes"]],
                      ["user_id", "name", "target_min", "target_max", "max_assets",
                       "min_allocation_value"]),
        holdings=frame([(u["user_id"], h.asset_id, h.symbol, h.asset_class, h.quantity,
                         h.currency, h.price, h.price_as_of)
                        for u in user_list for h in u["holdings"]],
                       ["user_id", "asset_id", "symbol", "asset_class", "quantity",
                        "currency", "price", "price_as_of"]),
        rules=frame([(u["user_id"], r.id, r.asset_class, r.metric, r.operator, r.value,
                      r.value2, r.points) for u in user_list for r in u["rules"]],
                    ["user_id", "id", "asset_class", "metric", "operator", "value",
                     "value2", "points"]),
        fundamentals=frame([(a, *[f.get(m) for m in METRICS]) for a, f in fundamentals.items()],
                           ["asset_id", *METRICS]).set_index("asset_id"),
    )  # fmt: skip


def one_user(u, fundamentals):
    scores = score_holdings([(h.asset_id, h.asset_class) for h in u["holdings"]], u["rules"],
                            fundamentals)  # fmt: skip
    try:
        rec = recommend(base_currency=u["base"], contribution=u["contribution"],
                        classes=u["classes"], holdings=u["holdings"], scores=scores, fx=FX,
                        criteria_version=1)  # fmt: skip
    except MissingRateError as exc:
        return scores, exc
    return scores, rec


@settings(max_examples=300, deadline=None)
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
    rules = [Rule(id="gt", asset_class="A", metric="market_cap", operator="gt",
                  value=D("12345678901234567890.1234567890"), points=5),
             Rule(id="eq", asset_class="A", metric="pe_ratio", operator="equals",
                  value=D("3.10"), points=7)]  # fmt: skip
    u = {"user_id": "u", "base": "USD", "contribution": D(100), "classes": [
        ClassSpec("A", D(0), D(100))], "holdings": [HoldingInput("x", "X", "A", D(1), "USD", D(1))],
        "rules": rules}  # fmt: skip
    fundamentals = {"x": {"market_cap": big, "pe_ratio": D("3.1")}}
    batch = to_batch([u], fundamentals)
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    assert float(big) == float(D("12345678901234567890.1234567890"))
    assert scored.holdings["score"].tolist() == [D("12.0000")]
    assert scored.holdings["top_contributor"].tolist() == ["pe_ratio"]


@pytest.mark.parametrize("currency", ["XXX"])
def test_a_user_without_a_rate_fails_alone_in_the_batch(currency: str) -> None:
    good = {"user_id": "good", "base": "USD", "contribution": D(100),
            "classes": [ClassSpec("A", D(0), D(100))],
            "holdings": [HoldingInput("x", "X", "A", D(1), "USD", D(10))], "rules": [
                Rule(id="r", asset_class="A", metric="pe_ratio", operator="exists", points=1)]}  # fmt: skip
    bad = {**good, "user_id": "bad",
           "holdings": [HoldingInput("y", "Y", "A", D(1), currency, D(10))]}  # fmt: skip
    result = run_batch(to_batch([bad, good], {"x": {"pe_ratio": D(1)}, "y": {}}), FX)
    assert str(result.failures["bad"]) == "no exchange rate for XXX->USD in the snapshot"
    assert result.recommendations["good"].allocated == D("100.00")
