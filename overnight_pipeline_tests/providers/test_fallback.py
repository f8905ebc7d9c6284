"""The chain primary → secondary → stored values, and the factory that builds it."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine

from overnight_pipeline.providers import FallbackProvider, ProviderError, provider_from_settings
from overnight_pipeline.providers.files import FilesProvider
from overnight_pipeline.providers.http import HttpProvider
from overnight_pipeline.providers.stored import StoredProvider
from overnight_pipeline.providers.synthetic import SyntheticProvider
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline_tests.providers.conftest import (
    CURRENCIES,
    DAY,
    FAST,
    INSTRUMENTS,
    STORED_DAY,
    write_csv_files,
)
from overnight_pipeline_tests.support.fake_market import (
    Dataset,
    FakeMarketServer,
    Fault,
    closed_port,
)

AGE = DAY - STORED_DAY


def dead_http() -> HttpProvider:
    url = f"http://127.0.0.1:{closed_port()}"
    return HttpProvider(url, url, options=dataclasses.replace(FAST, max_retries=1))


def partial_files(tmp_path: Path, dataset: Dataset, keep: int) -> FilesProvider:
    """A secondary that knows only the first `keep` instruments and the EUR rate."""
    part = Dataset(
        day=dataset.day,
        rates={"EUR": dataset.rates["EUR"]},
        quotes=dict(list(dataset.quotes.items())[:keep]),
        fundamentals=dict(list(dataset.fundamentals.items())[:keep]),
    )
    return FilesProvider(write_csv_files(tmp_path / "secondary", part), name="files")


def test_a_dead_primary_falls_back_to_the_secondary_then_to_stored_values(
    tmp_path: Path, dataset: Dataset, stored_engine: Engine
) -> None:
    chain = FallbackProvider(
        [dead_http(), partial_files(tmp_path, dataset, keep=3), StoredProvider(stored_engine)]
    )

    prices = chain.fetch_prices(INSTRUMENTS, day=DAY)

    assert prices.quotes == dataset.quotes and prices.missing == []
    fresh, stale = INSTRUMENTS[:3], INSTRUMENTS[3:]
    assert {prices.source_of(i) for i in fresh} == {"files"}
    assert {prices.source_of(i) for i in stale} == {"stored"}
    assert prices.stale is True
    assert prices.stale_instruments == frozenset(stale)
    assert prices.ages == dict.fromkeys(stale, AGE)
    assert prices.source == "files+stored"
    assert prices.errors[0].startswith("http-prices: every one of 1 prices batch(es) failed")

    fundamentals = chain.fetch_fundamentals(INSTRUMENTS, day=DAY)
    assert fundamentals.values == dataset.fundamentals
    assert fundamentals.stale_instruments == frozenset(stale)

    rates = chain.fetch_rates(CURRENCIES, day=DAY)
    assert rates.usd_to == dataset.rates
    assert rates.source_of("EUR") == "files" and rates.source_of("BRL") == "stored"
    assert rates.stale_currencies == frozenset({"BRL", "GBP", "JPY"})
    assert rates.stale is True and rates.age == AGE
    fx = rates.fx()
    assert fx.stale is True and fx.rate("EUR", "BRL") == dataset.rates["BRL"] / dataset.rates["EUR"]


def test_only_stored_values_left_are_all_stale_with_their_age(
    stored_engine: Engine, dataset: Dataset
) -> None:
    chain = FallbackProvider([dead_http(), StoredProvider(stored_engine)])

    rates = chain.fetch_rates(CURRENCIES, day=DAY)
    prices = chain.fetch_prices(INSTRUMENTS, day=DAY)

    assert rates.source == "stored" and rates.stale and rates.age == timedelta(days=2)
    assert rates.rate_date == STORED_DAY and rates.usd_to == dataset.rates
    assert prices.source == "stored" and prices.sources == {}
    assert prices.stale_instruments == frozenset(INSTRUMENTS)
    assert any("http-rates" in e for e in rates.errors)


def test_stored_values_after_the_day_are_never_served(stored_engine: Engine) -> None:
    before = STORED_DAY - timedelta(days=1)

    result = StoredProvider(stored_engine).fetch_prices(INSTRUMENTS, day=before)

    assert result.quotes == {} and result.missing == INSTRUMENTS and result.stale is False


def test_a_primary_that_answers_in_part_hands_on_only_what_it_missed(
    fake_server: FakeMarketServer, tmp_path: Path, dataset: Dataset
) -> None:
    one_at_a_time = dataclasses.replace(FAST, concurrency=1)
    http = HttpProvider(
        fake_server.rates_url, fake_server.prices_url, batch_size=4, options=one_at_a_time
    )
    fake_server.plan(None, Fault(500), Fault(500), Fault(500))  # the second batch fails
    chain = FallbackProvider([http, partial_files(tmp_path, dataset, keep=8)])

    prices = chain.fetch_prices(INSTRUMENTS, day=DAY)

    assert prices.quotes == dataset.quotes and not prices.stale
    assert {prices.source_of(i) for i in INSTRUMENTS[:4]} == {"http"}
    assert {prices.source_of(i) for i in INSTRUMENTS[4:]} == {"files"}
    assert prices.errors == ["http-prices: POST /prices failed after 3 attempt(s): HTTP 500"]


def test_when_every_link_fails_the_chain_raises_with_each_reason(tmp_path: Path) -> None:
    unreachable = make_engine(f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/none")
    chain = FallbackProvider(
        [dead_http(), FilesProvider(tmp_path / "empty"), StoredProvider(unreachable)]
    )

    with pytest.raises(ProviderError) as raised:
        chain.fetch_rates(CURRENCIES, day=DAY)

    message = str(raised.value)
    assert message.startswith("http: no provider could give exchange rates: http-rates:")
    assert "files: cannot read" in message
    assert "stored: cannot read stored rates: OperationalError" in message
    assert chain.health().ok is False
    unreachable.dispose()


def test_the_factory_builds_the_chain_from_settings(
    csv_dir: Path, market_db: Engine, fake_server: FakeMarketServer
) -> None:
    synthetic = provider_from_settings(load_settings(market_data="synthetic"))
    assert [p.name for p in synthetic.providers] == ["synthetic"]
    assert isinstance(synthetic.providers[0], SyntheticProvider)

    files = provider_from_settings(
        load_settings(market_data=f"files:{csv_dir}"), engine=market_db, secondary="synthetic"
    )
    assert [type(p) for p in files.providers] == [
        FilesProvider,
        SyntheticProvider,
        StoredProvider,
    ]

    settings = load_settings(
        market_data="http",
        rates_url=fake_server.rates_url,
        prices_url=fake_server.prices_url,
        provider_batch_size=7,
        provider_rate_limit=3.5,
    )
    chain = provider_from_settings(settings, engine=market_db)
    http = chain.providers[0]
    assert isinstance(http, HttpProvider)
    assert http.batch_size == 7 and http.options.rate_limit == 3.5
    assert chain.name == "http" and chain.health().ok
