"""Property tests over random portfolios: the money invariants of BEHAVIOUR §3."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.recommendations import ClassSpec, HoldingInput, recommend
from overnight_pipeline.core.scoring import Rule, replay, rules_document, score_holdings
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline_tests.core.helpers import score

FX = FxRates(usd_to={"BRL": Decimal("5.0123"), "JPY": Decimal("151.37"), "EUR": Decimal("0.9213")})
money = st.decimals(min_value=0, max_value=100_000, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def bands(draw) -> tuple[Decimal, Decimal]:
    lo = draw(st.integers(0, 100))
    hi = draw(st.integers(lo, 100))
    return Decimal(lo), Decimal(hi)


@st.composite
def portfolios(draw):
    n_classes = draw(st.integers(1, 5))
    classes = []
    for i in range(n_classes):
        lo, hi = draw(bands())
        classes.append(
            ClassSpec(
                name=f"C{i}",
                target_min=lo,
                target_max=hi,
                max_assets=draw(st.none() | st.integers(1, 4)),
                min_allocation_value=draw(st.none() | st.decimals(0, 500, places=2)),
            )
        )
    n = draw(st.integers(0, 12))
    holdings, scores = [], []
    for j in range(n):
        currency = draw(st.sampled_from(["USD", "BRL", "JPY", "EUR"]))
        holdings.append(
            HoldingInput(
                asset_id=f"a{j}",
                symbol=f"S{j:02d}",
                asset_class=f"C{draw(st.integers(0, n_classes - 1))}",
                quantity=draw(st.decimals(Decimal("0.001"), 10_000, places=3)),
                currency=currency,
                price=draw(st.none() | st.decimals(Decimal("0.01"), 5_000, places=2)),
            )
        )
        scores.append(score(f"a{j}", draw(st.integers(-50, 100))))
    base = draw(st.sampled_from(["USD", "BRL", "JPY"]))
    contribution = draw(st.none() | money)
    if base == "JPY" and contribution is not None:
        contribution = contribution.quantize(Decimal(1))
    return base, contribution, classes, holdings, {s.asset_id: s for s in scores}


@settings(max_examples=300, deadline=None)
@given(portfolios())
def test_money_invariants_hold_for_any_portfolio(p) -> None:
    base, contribution, classes, holdings, scores = p
    r = recommend(
        base_currency=base,
        contribution=contribution,
        classes=classes,
        holdings=holdings,
        scores=scores,
        fx=FX,
    )
    c = contribution or Decimal(0)
    amounts = [rec.amount for rec in r.recommendations]
    # Amounts and unallocated reconcile to the contribution exactly, in minor units.
    assert sum(amounts, Decimal(0)) + r.unallocated == c
    q = Decimal(1) if base == "JPY" else Decimal("0.01")
    assert all(a > 0 and a == a.quantize(q) for a in amounts)
    assert r.unallocated >= 0
    # Only positively scored assets receive money.
    assert all(scores[rec.asset_id].score > 0 for rec in r.recommendations)
    # No class is pushed above its max band by the purchase (on exact values).
    usd_to = {"USD": Fraction(1), **{k: Fraction(v) for k, v in FX.usd_to.items()}}
    value: dict[str, Fraction] = {}
    for h in holdings:
        if h.price is not None:
            rate = usd_to[base] / usd_to[h.currency]
            worth = Fraction(h.quantity) * Fraction(h.price) * rate
            value[h.asset_class] = value.get(h.asset_class, Fraction(0)) + worth
    after = sum(value.values(), Fraction(0)) + Fraction(c)
    for cls in r.classes:
        if cls.amount > 0:
            assert value[cls.name] + Fraction(cls.amount) <= Fraction(cls.target_max) / 100 * after
    # max_assets and min_allocation_value are honoured.
    spec = {s.name: s for s in classes}
    for cls in r.classes:
        recs = [x for x in r.recommendations if x.asset_class == cls.name]
        if spec[cls.name].max_assets is not None:
            assert len(recs) <= spec[cls.name].max_assets


metric = st.sampled_from(METRICS)
value = st.decimals(-1000, 1000, places=4, allow_nan=False, allow_infinity=False)


@st.composite
def rules(draw) -> list[Rule]:
    out = []
    for i in range(draw(st.integers(0, 8))):
        op = draw(st.sampled_from(["gt", "lt", "gte", "lte", "between", "equals", "exists"]))
        v = None if op == "exists" else draw(value)
        v2 = draw(st.decimals(v, 2000, places=4)) if op == "between" else None
        out.append(
            Rule(
                id=f"r{i}",
                asset_class=draw(st.sampled_from(["A", "B"])),
                metric=draw(metric),
                operator=op,
                value=v,
                value2=v2,
                points=draw(st.integers(-100, 100)),
            )
        )
    return out


@settings(max_examples=200, deadline=None)
@given(rules(), st.lists(st.dictionaries(metric, st.none() | value), min_size=1, max_size=5))
def test_replay_of_captured_inputs_reproduces_the_scores(rule_list, fundamentals_list) -> None:
    holdings = [(f"x{i}", "A" if i % 2 else "B") for i in range(len(fundamentals_list))]
    fundamentals = {h[0]: f for h, f in zip(holdings, fundamentals_list, strict=True)}
    scores = score_holdings(holdings, rule_list, fundamentals)
    captured = {
        "criteria": {"version": 1, "rules": rules_document(rule_list)},
        "holdings": [{"assetId": a, "assetClass": c} for a, c in holdings],
        "fundamentals": {
            a: {m: None if v is None else format(v, "f") for m, v in f.items()}
            for a, f in fundamentals.items()
        },
    }
    assert replay(captured) == scores
