"""The synthetic provider: a pure function of (market, symbol, day), plausible, no I/O."""

from __future__ import annotations

import builtins
import socket
import statistics
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import numpy as np
import pytest

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.synthetic import (
    USD_RATES,
    SyntheticProvider,
    _decimal_strings,
)

DAY = date(2026, 11, 30)
MANY = [(m, f"T{i:04d}") for m in ("NYSE", "B3", "LSE", "TSE", "XETRA") for i in range(300)]


def test_any_order_and_any_instance_give_the_same_values() -> None:
    a = SyntheticProvider().fetch_prices(MANY, day=DAY)
    b = SyntheticProvider().fetch_prices(list(reversed(MANY)), day=DAY)
    c = SyntheticProvider().fetch_prices(MANY[:7], day=DAY)

    assert a.quotes == b.quotes
    assert all(a.quotes[i] == c.quotes[i] for i in MANY[:7])


def test_a_replayed_day_is_identical_and_another_day_differs() -> None:
    provider = SyntheticProvider()
    later = DAY + timedelta(days=1)

    assert (
        provider.fetch_rates(["BRL", "EUR"], day=DAY).usd_to
        == provider.fetch_rates(["EUR", "BRL"], day=DAY).usd_to
    )
    assert (
        provider.fetch_rates(["BRL"], day=DAY).usd_to
        != provider.fetch_rates(["BRL"], day=later).usd_to
    )
    assert (
        provider.fetch_prices(MANY, day=DAY).quotes != provider.fetch_prices(MANY, day=later).quotes
    )
    # Fundamentals drift by quarter, not by day.
    assert (
        provider.fetch_fundamentals(MANY[:50], day=DAY).values
        == provider.fetch_fundamentals(MANY[:50], day=later).values
    )


def test_magnitudes_are_plausible_per_market_and_currency() -> None:
    result = SyntheticProvider().fetch_prices(MANY, day=DAY)

    def median(market: str) -> Decimal:
        return statistics.median(q.price for (m, _), q in result.quotes.items() if m == market)

    assert {q.currency for (m, _), q in result.quotes.items() if m == "TSE"} == {"JPY"}
    # Centres: about 2,500 JPY, 80 USD, 25 BRL, 12 GBP a share.
    assert median("TSE") > 10 * median("NYSE") > 10 * median("B3") > 10 * median("LSE")
    assert all(
        q.price == q.price.to_integral() for (m, _), q in result.quotes.items() if m == "TSE"
    )
    assert Decimal(20) < median("NYSE") < Decimal(300)

    rates = SyntheticProvider().fetch_rates(list(USD_RATES), day=DAY).usd_to
    for currency, rate in rates.items():
        assert abs(float(rate) / USD_RATES[currency] - 1) <= 0.0101


def test_some_fundamentals_are_null_but_most_are_not() -> None:
    values = SyntheticProvider().fetch_fundamentals(MANY, day=DAY).values
    cells = [v for metrics in values.values() for v in metrics.values()]

    assert all(list(metrics) == list(METRICS) for metrics in values.values())
    assert 0.02 < sum(v is None for v in cells) / len(cells) < 0.2
    assert any(v is not None and v < 0 for m in values.values() for v in [m["earnings"]])


def test_unknown_markets_and_currencies_are_missing_not_invented() -> None:
    provider = SyntheticProvider()

    prices = provider.fetch_prices([("NYSE", "KO"), ("MOON", "X")], day=DAY)
    rates = provider.fetch_rates(["BRL", "XAU"], day=DAY)

    assert prices.missing == [("MOON", "X")]
    assert prices.errors == ["synthetic: MOON:X: unknown market 'MOON'"]
    assert rates.missing == ["XAU"] and list(rates.usd_to) == ["BRL"]


def test_no_io_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    provider = SyntheticProvider()

    def refuse(*_: Any, **__: Any) -> Any:
        raise AssertionError("the synthetic provider must not do I/O")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(builtins, "open", refuse)
    provider.fetch_rates(["BRL"], day=DAY)
    provider.fetch_prices(MANY[:10], day=DAY)
    provider.fetch_fundamentals(MANY[:10], day=DAY)
    assert provider.health().ok


def test_faster_decimal_strings_match_the_original_formatting() -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(3, 2, 2000) * rng.choice([-1, 1], 2000)
    values[::13] = np.nan

    for places in (0, 2, 6):
        original = [None if np.isnan(v) else f"{v:.{places}f}" for v in values]
        assert _decimal_strings(values, places) == original
