"""The one contract every provider kind honours, run against each of them.

Every kind is loaded with the same dataset (made by the synthetic provider for DAY): the
files kind reads it from CSV, the HTTP kind from a real local server, the stored kind from
PostgreSQL (stored two days earlier), the chain from its secondary behind a dead primary.
So the suite also proves the round trips through CSV, JSON and the database are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from sqlalchemy import Engine

from overnight_pipeline.core.money import MissingRateError
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.base import Instrument, MarketDataProvider
from overnight_pipeline.providers.fallback import FallbackProvider
from overnight_pipeline.providers.files import FilesProvider
from overnight_pipeline.providers.http import HttpProvider
from overnight_pipeline.providers.stored import StoredProvider
from overnight_pipeline.providers.synthetic import SyntheticProvider
from overnight_pipeline_tests.providers.conftest import (
    CURRENCIES,
    DAY,
    FAST,
    INSTRUMENTS,
    STORED_DAY,
    UNKNOWN_CURRENCY,
    UNKNOWN_INSTRUMENT,
)
from overnight_pipeline_tests.support.fake_market import Dataset, FakeMarketServer, closed_port

KINDS = ["synthetic", "files", "http", "stored", "chain"]


@dataclass
class Subject:
    kind: str
    make: Callable[[int], MarketDataProvider]  # batch size -> provider
    stale: bool = False
    age: timedelta | None = None

    @property
    def provider(self) -> MarketDataProvider:
        return self.make(50)


@pytest.fixture(params=KINDS)
def subject(request: pytest.FixtureRequest) -> Subject:
    kind = request.param
    if kind == "synthetic":
        return Subject(kind, lambda _: SyntheticProvider())
    if kind == "files":
        csv_dir: Path = request.getfixturevalue("csv_dir")
        return Subject(kind, lambda _: FilesProvider(csv_dir))
    if kind == "http":
        fake: FakeMarketServer = request.getfixturevalue("fake_server")
        return Subject(
            kind,
            lambda size: HttpProvider(
                fake.rates_url, fake.prices_url, batch_size=size, options=FAST
            ),
        )
    if kind == "stored":
        engine: Engine = request.getfixturevalue("stored_engine")
        return Subject(kind, lambda _: StoredProvider(engine), stale=True, age=DAY - STORED_DAY)
    csv_dir = request.getfixturevalue("csv_dir")
    dead = f"http://127.0.0.1:{closed_port()}"
    return Subject(
        kind,
        lambda size: FallbackProvider(
            [
                HttpProvider(dead, dead, batch_size=size, options=FAST),
                FilesProvider(csv_dir, name="files"),
            ]
        ),
    )


def _source(subject: Subject, provider: MarketDataProvider) -> str:
    return "files" if subject.kind == "chain" else provider.name


def test_provider_satisfies_the_protocol(subject: Subject) -> None:
    assert isinstance(subject.provider, MarketDataProvider)
    assert subject.provider.name


def test_rates_are_exact_decimals_for_known_currencies(subject: Subject, dataset: Dataset) -> None:
    provider = subject.provider
    result = provider.fetch_rates([*CURRENCIES, "USD", UNKNOWN_CURRENCY, "brl"], day=DAY)

    assert result.usd_to == dataset.rates
    assert all(isinstance(r, Decimal) and r > 0 for r in result.usd_to.values())
    assert "USD" not in result.usd_to
    assert result.missing == [UNKNOWN_CURRENCY]
    assert result.source == _source(subject, provider)
    assert result.as_of.tzinfo is not None and result.as_of.utcoffset() == timedelta(0)
    assert result.stale is subject.stale
    assert result.age == subject.age


def test_rates_build_the_core_fx_snapshot(subject: Subject, dataset: Dataset) -> None:
    fx = subject.provider.fetch_rates(CURRENCIES, day=DAY).fx()

    assert fx.stale is subject.stale
    assert fx.rate("USD", "BRL") == dataset.rates["BRL"]
    assert fx.rate("EUR", "JPY") == dataset.rates["JPY"] / dataset.rates["EUR"]
    with pytest.raises(MissingRateError):
        fx.rate("USD", UNKNOWN_CURRENCY)


def test_prices_cover_every_distinct_instrument_once(subject: Subject, dataset: Dataset) -> None:
    provider = subject.provider
    asked = [*INSTRUMENTS, UNKNOWN_INSTRUMENT, *reversed(INSTRUMENTS), INSTRUMENTS[0]]
    result = provider.fetch_prices(asked, day=DAY)

    assert result.quotes == dataset.quotes
    assert result.missing == [UNKNOWN_INSTRUMENT]
    assert set(result.quotes).isdisjoint(result.missing)
    for quote in result.quotes.values():
        assert isinstance(quote.price, Decimal) and quote.price > 0
        assert len(quote.currency) == 3 and quote.as_of.tzinfo is not None
    assert result.source == _source(subject, provider)
    assert all(result.source_of(i) == result.source for i in result.quotes)


def test_fundamentals_have_every_metric_with_nulls_kept(subject: Subject, dataset: Dataset) -> None:
    provider = subject.provider
    result = provider.fetch_fundamentals([*INSTRUMENTS, UNKNOWN_INSTRUMENT], day=DAY)

    assert result.values == dataset.fundamentals
    assert result.missing == [UNKNOWN_INSTRUMENT]
    for values in result.values.values():
        assert list(values) == list(METRICS)
        assert all(v is None or isinstance(v, Decimal) for v in values.values())
    assert any(v is None for values in result.values.values() for v in values.values())
    assert result.source == _source(subject, provider)


def test_same_inputs_give_the_same_outputs(subject: Subject) -> None:
    first, second = subject.provider, subject.provider

    assert (
        first.fetch_rates(CURRENCIES, day=DAY).usd_to
        == second.fetch_rates(CURRENCIES, day=DAY).usd_to
    )
    assert (
        first.fetch_prices(INSTRUMENTS, day=DAY).quotes
        == second.fetch_prices(list(reversed(INSTRUMENTS)), day=DAY).quotes
    )
    assert (
        first.fetch_fundamentals(INSTRUMENTS, day=DAY).values
        == second.fetch_fundamentals(INSTRUMENTS, day=DAY).values
    )


def test_stale_items_are_flagged_with_their_age(subject: Subject) -> None:
    provider = subject.provider
    prices = provider.fetch_prices(INSTRUMENTS, day=DAY)
    fundamentals = provider.fetch_fundamentals(INSTRUMENTS, day=DAY)

    for result in (prices, fundamentals):
        assert result.stale is subject.stale
        expected = set(INSTRUMENTS) if subject.stale else set()
        assert set(result.stale_instruments) == expected
        assert result.ages == dict.fromkeys(expected, subject.age)
        assert result.as_of.tzinfo == UTC


def test_small_batches_give_the_same_answer(subject: Subject, dataset: Dataset) -> None:
    provider = subject.make(3)

    assert provider.fetch_prices(INSTRUMENTS, day=DAY).quotes == dataset.quotes
    assert provider.fetch_fundamentals(INSTRUMENTS, day=DAY).values == dataset.fundamentals


def test_empty_requests_answer_empty(subject: Subject) -> None:
    provider = subject.provider
    nothing: list[Instrument] = []

    assert provider.fetch_rates([], day=DAY).usd_to == {}
    assert provider.fetch_rates(["USD"], day=DAY).missing == []
    prices = provider.fetch_prices(nothing, day=DAY)
    assert (prices.quotes, prices.missing) == ({}, [])
    fundamentals = provider.fetch_fundamentals(nothing, day=DAY)
    assert (fundamentals.values, fundamentals.missing) == ({}, [])


def test_health_reports_ok(subject: Subject) -> None:
    health = subject.provider.health()

    # The chain's primary is dead on purpose: it reports that, with its working secondary.
    assert health.ok is (subject.kind != "chain")
    assert health.detail
