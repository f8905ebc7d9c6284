from __future__ import annotations

from decimal import Decimal

import pytest

from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.recommendations import BELOW_MINIMUM, NO_ELIGIBLE_ASSET, water_fill
from overnight_pipeline_tests.core.helpers import D, amounts, band, by_class, holding, run, score


def test_water_filling_brings_both_classes_to_their_mid() -> None:
    # T = 1000, C = 1000, T' = 2000; mids are 1000 each: A needs 400, B needs 600.
    r = run(
        [band("A", 40, 60), band("B", 40, 60)],
        [holding("AAA", "A", 600), holding("BBB", "B", 400)],
        [score("AAA", 10), score("BBB", 10)],
    )
    assert by_class(r) == {"A": D("400.00"), "B": D("600.00")}
    assert r.unallocated == 0


def test_the_class_furthest_below_its_mid_fills_first() -> None:
    # C = 100, T' = 1100, mids 550: A (600) is already above its mid; B (400) takes all 100.
    r = run(
        [band("A", 40, 60), band("B", 40, 60)],
        [holding("AAA", "A", 600), holding("BBB", "B", 400)],
        [score("AAA", 10), score("BBB", 10)],
        contribution="100",
    )
    assert by_class(r) == {"A": D(0), "B": D("100.00")}


def test_a_class_above_its_max_receives_nothing() -> None:
    r = run(
        [band("A", 10, 30), band("B", 70, 90)],
        [holding("AAA", "A", 900), holding("BBB", "B", 100)],
        [score("AAA", 50), score("BBB", 10)],
        contribution="100",
    )
    assert amounts(r) == {"BBB": D("100.00")}
    gaps = {c.name: c.allocation_gap for c in r.classes}
    assert gaps == {"A": D(20) - D(90), "B": D(80) - D(10)}


def test_after_every_mid_is_reached_classes_rise_toward_max_then_the_rest_is_unallocated() -> None:
    # Empty classes, 1000 to place: mids 300 + 400, then maxes 400 + 500; 100 cannot be placed.
    got, leftover = water_fill(
        D(1000), {"A": D(0), "B": D(0)}, {"A": D(300), "B": D(400)}, {"A": D(400), "B": D(500)}
    )
    assert got == {"A": D(400), "B": D(500)} and leftover == D(100)


def test_partial_fill_uses_one_common_level() -> None:
    # f·300 + f·400 = 350 → f = 0.5: both classes at half their mid.
    got, leftover = water_fill(
        D(350), {"A": D(0), "B": D(0)}, {"A": D(300), "B": D(400)}, {"A": D(400), "B": D(500)}
    )
    assert got == {"A": D(150), "B": D(200)} and leftover == 0


def test_portfolio_of_value_zero_takes_the_first_contribution() -> None:
    r = run(
        [band("A", 20, 40), band("B", 30, 50)],
        [holding("AAA", "A", 0 + 1, price=None), holding("BBB", "B", 1, price=None)],
        [score("AAA", 5), score("BBB", 5)],
    )
    # No holding is priced: nothing is eligible, everything stays unallocated, gaps are mids.
    assert r.total_value == 0 and r.unallocated == D(1000)
    assert [c.status for c in r.classes] == [NO_ELIGIBLE_ASSET, NO_ELIGIBLE_ASSET]
    assert [c.allocation_gap for c in r.classes] == [D(30), D(40)]
    assert r.missing_prices == ("AAA", "BBB")


def test_a_class_with_no_eligible_asset_is_reported_and_others_fill() -> None:
    r = run(
        [band("A", 40, 60), band("B", 40, 60)],
        [holding("AAA", "A", 500), holding("BBB", "B", 500)],
        [score("AAA", 0), score("BBB", 10)],
    )
    assert {c.name: c.status for c in r.classes} == {"A": NO_ELIGIBLE_ASSET, "B": None}
    # T' = 2000. B: to its mid 1000 (+500), then to its max 1200 (+200); 300 unallocated.
    assert amounts(r) == {"BBB": D("700.00")} and r.unallocated == D("300.00")
    assert str(amounts(r)["BBB"]) == "700.00"


def test_negative_or_zero_scores_never_receive_money() -> None:
    r = run(
        [band("A", 0, 100)],
        [holding("NEG", "A", 10), holding("ZER", "A", 10), holding("POS", "A", 10)],
        [score("NEG", -5), score("ZER", 0), score("POS", 1)],
    )
    assert amounts(r) == {"POS": D("1000.00")}


def test_max_assets_keeps_the_best_scored() -> None:
    r = run(
        [band("A", 0, 100, max_assets=2)],
        [holding("X", "A", 1), holding("Y", "A", 1), holding("Z", "A", 1)],
        [score("X", 30), score("Y", 20), score("Z", 10)],
    )
    assert amounts(r) == {"X": D("600.00"), "Y": D("400.00")}


def test_min_allocation_value_drops_the_lowest_scored_and_resplits() -> None:
    # 100 split 50/30/20; Z's 20 is below 25, so Z goes and 100 is split 62.50/37.50.
    r = run(
        [band("A", 0, 100, min_allocation_value=D(25))],
        [holding("X", "A", 1), holding("Y", "A", 1), holding("Z", "A", 1)],
        [score("X", 50), score("Y", 30), score("Z", 20)],
        contribution="100",
    )
    assert amounts(r) == {"X": D("62.50"), "Y": D("37.50")}


def test_min_allocation_ties_drop_the_later_symbol() -> None:
    r = run(
        [band("A", 0, 100, min_allocation_value=D(40))],
        [holding("X", "A", 1), holding("Y", "A", 1), holding("Z", "A", 1)],
        [score("X", 10), score("Y", 10), score("Z", 10)],
        contribution="100",
    )
    # 33.33 each < 40: Z (later symbol) goes first; 50/50 then holds.
    assert amounts(r) == {"X": D("50.00"), "Y": D("50.00")}


def test_a_class_below_its_minimum_even_on_one_asset_is_dropped_and_filling_redone() -> None:
    r = run(
        [band("A", 40, 60, min_allocation_value=D(500)), band("B", 40, 60)],
        [holding("AAA", "A", 1000), holding("BBB", "B", 1000)],
        [score("AAA", 10), score("BBB", 10)],
        contribution="200",
    )
    # Water-filling gives 100 + 100; A's 100 < 500 so A is dropped and B takes all 200.
    assert {c.name: c.status for c in r.classes}["A"] == BELOW_MINIMUM
    assert amounts(r) == {"BBB": D("200.00")}


def test_largest_remainder_gives_the_extra_cent_by_score_then_symbol() -> None:
    r = run(
        [band("A", 0, 100)],
        [holding("B", "A", 1), holding("A", "A", 1), holding("C", "A", 1)],
        [score("A", 10), score("B", 10), score("C", 10)],
        contribution="100",
    )
    assert amounts(r) == {"A": D("33.34"), "B": D("33.33"), "C": D("33.33")}
    r = run(
        [band("A", 0, 100)],
        [holding("B", "A", 1), holding("A", "A", 1)],
        [score("A", 10), score("B", 20)],
        contribution="0.01",
    )
    assert amounts(r) == {"B": D("0.01")}


def test_jpy_base_currency_has_no_cents() -> None:
    r = run(
        [band("A", 0, 100)],
        [
            holding("X", "A", 1, currency="USD"),
            holding("Y", "A", 1, currency="USD"),
            holding("Z", "A", 1, currency="USD"),
        ],
        [score("X", 1), score("Y", 1), score("Z", 1)],
        contribution="10000",
        base="JPY",
    )
    assert sorted(amounts(r).values()) == [D(3333), D(3333), D(3334)]
    assert all(a == a.to_integral_value() for a in amounts(r).values())
    assert r.total_value == D(450)  # 3 × 1 USD × 150


def test_contribution_unset_gives_zero_amounts_but_gaps_and_summary() -> None:
    r = run(
        [band("A", 40, 60), band("B", 40, 60)],
        [holding("AAA", "A", 750), holding("BBB", "B", 250)],
        [score("AAA", 10), score("BBB", 10)],
        contribution=None,
    )
    assert r.recommendations == () and r.unallocated == 0 and r.contribution == 0
    assert [c.allocation_gap for c in r.classes] == [D(-25), D(25)]
    assert r.total_value == D(1000)


def test_values_are_converted_to_the_base_currency() -> None:
    fx = FxRates(usd_to={"BRL": D("5")})
    r = run(
        [band("A", 40, 60), band("B", 40, 60)],
        [holding("USD1", "A", 100), holding("BRL1", "B", 500, currency="BRL")],
        [score("USD1", 1), score("BRL1", 1)],
        contribution="0",
        fx=fx,
    )
    assert r.total_value == D(200)  # 100 USD + 500 BRL / 5


def test_a_missing_rate_is_an_error_naming_the_pair() -> None:
    with pytest.raises(MissingRateError, match="CHF->USD"):
        run([band("A", 0, 100)], [holding("X", "A", 1, currency="CHF")], [score("X", 1)])


def test_amounts_reconcile_to_the_contribution_exactly() -> None:
    r = run(
        [band("A", 10, 35), band("B", 20, 45), band("C", 5, 30)],
        [
            holding("A1", "A", "123.45"),
            holding("A2", "A", "77.7"),
            holding("B1", "B", "1000"),
            holding("C1", "C", "3.33"),
            holding("C2", "C", "9.99"),
        ],
        [score("A1", 7), score("A2", 3), score("B1", 11), score("C1", 13), score("C2", 1)],
        contribution="1234.56",
    )
    assert sum(amounts(r).values(), Decimal(0)) + r.unallocated == D("1234.56")
    assert all(a == a.quantize(D("0.01")) for a in amounts(r).values())


def test_several_classes_below_their_minimum_drop_the_furthest_below_first() -> None:
    # Issue 21 item 3. C = 1,000, T' = 2,101: mids 735.35 / 735.35 / 420.20, maxes 1,050.50
    # / 840.40 / 630.30. B (1,000) is above its max; A and C share one fill level
    # f = 1,101 / 1,155.55: A 700.63…, C 300.36…, both below their minimum. A is further
    # below (35 % of 2,000 against 75 % of 400) and goes; C alone fills to its mid, then its
    # max: 530.30, and 469.70 no class can take. (Dropping the smaller amount first dropped
    # C, then A: nothing invested.)
    r = run(
        [
            band("A", 20, 50, min_allocation_value=D(2000)),
            band("B", 30, 40, min_allocation_value=D(400)),
            band("C", 10, 30, min_allocation_value=D(400)),
        ],
        [holding("AAA", "A", 1), holding("BBB", "B", 1000), holding("CCC", "C", 100)],
        [score("AAA", 1), score("BBB", 1), score("CCC", 1)],
    )
    assert {c.name: c.status for c in r.classes} == {"A": BELOW_MINIMUM, "B": None, "C": None}
    assert amounts(r) == {"CCC": D("530.30")} and r.unallocated == D("469.70")


def test_a_class_that_can_take_exactly_c_takes_c() -> None:
    # Issue 21 item 1: 10 G at 1,339.1053 GBP, BRL base, USD→BRL 5.26863, USD→GBP
    # 0.794606. T + C rounded at 28 digits left the room 17,895.0599…96: one cent short.
    fx = FxRates(usd_to={"BRL": D("5.26863"), "GBP": D("0.794606")})
    r = run(
        [band("A", 0, 100)],
        [holding("G", "A", 10, currency="GBP", price="1339.1053")],
        [score("G", 1)],
        contribution="17895.06",
        base="BRL",
        fx=fx,
    )
    assert amounts(r) == {"G": D("17895.06")} and r.unallocated == D("0.00")


def test_exact_remainder_ties_go_by_score_then_symbol() -> None:
    # Issue 21 item 2: 0.24 split 5:2:2 is 0.1333… / 0.0533… / 0.0533…; floors 0.13 / 0.05
    # / 0.05 leave one cent and three equal remainders (1/300): the higher score takes it.
    r = run(
        [band("A", 0, 100)],
        [holding("AAA", "A", 1), holding("BBB", "A", 1), holding("CCC", "A", 1)],
        [score("AAA", 5), score("BBB", 2), score("CCC", 2)],
        contribution="0.24",
    )
    assert amounts(r) == {"AAA": D("0.14"), "BBB": D("0.05"), "CCC": D("0.05")}
    r = run(
        [band("A", 0, 100)],
        [holding("AAA", "A", 1), holding("BBB", "A", 1), holding("CCC", "A", 1)],
        [score("AAA", 4), score("BBB", 1), score("CCC", 1)],
        contribution="0.02",
    )
    assert amounts(r) == {"AAA": D("0.02")}


def test_units_never_exceed_the_contribution_nor_a_class_max() -> None:
    # C = 100.005 has more digits than USD: 10,000 units are handed out, 0.005 stays.
    r = run([band("A", 0, 100)], [holding("X", "A", 1)], [score("X", 1)], contribution="100.005")
    assert amounts(r) == {"X": D("100.00")} and r.unallocated == D("0.005")
    # C = 100.15 into empty classes A (10–10 %, two equal picks) and B (0–100 %): A's mid
    # and max are both 10.015, B gets 90.135. Floors 5.00 / 5.00 / 90.13 leave 2 cents;
    # A1 and A2 have the largest remainders (0.0075), but a cent to each would take A to
    # 10.02, above its max: A2's goes to B1, the next remainder.
    r = run(
        [band("A", 10, 10), band("B", 0, 100)],
        [holding("A1", "A", 0), holding("A2", "A", 0), holding("B1", "B", 0)],
        [score("A1", 1), score("A2", 1), score("B1", 1)],
        contribution="100.15",
    )
    assert amounts(r) == {"A1": D("5.01"), "A2": D("5.00"), "B1": D("90.14")}
    assert r.unallocated == D("0.00")
