"""HTTP providers against a real local server: retries, Retry-After, timeouts, the rate
limit, the circuit breaker, batching and malformed answers. Requests are counted where they
arrive, at the server."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pybreaker
import pytest

from overnight_pipeline.providers.base import ProviderError
from overnight_pipeline.providers.http import HttpProvider
from overnight_pipeline.providers.resilience import (
    BreakerState,
    CircuitOpenError,
    HttpOptions,
    breaker_state,
    circuit_breaker,
    refusal,
    retry_after_seconds,
)
from overnight_pipeline_tests.providers.conftest import CURRENCIES, DAY, FAST, INSTRUMENTS
from overnight_pipeline_tests.support.fake_market import (
    Dataset,
    FakeMarketServer,
    Fault,
    closed_port,
    malformed,
    patched,
    silent_listener,
    slow,
    throttled,
)


def http(fake: FakeMarketServer, *, batch_size: int = 50, **options: Any) -> HttpProvider:
    return HttpProvider(
        fake.rates_url,
        fake.prices_url,
        batch_size=batch_size,
        options=dataclasses.replace(FAST, **options),
    )


# -- retries ------------------------------------------------------------------------------------


def test_server_errors_are_retried_until_an_answer(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    fake_server.plan(Fault(500), Fault(503))

    result = http(fake_server, max_retries=2).fetch_rates(CURRENCIES, day=DAY)

    assert result.usd_to == dataset.rates
    assert len(fake_server.requests("/v1")) == 3


def test_retries_stop_at_the_bound(fake_server: FakeMarketServer) -> None:
    fake_server.default = Fault(500)

    with pytest.raises(
        ProviderError, match=r"http-rates: GET .* failed after 3 attempt\(s\): HTTP 500"
    ):
        http(fake_server, max_retries=2).fetch_rates(CURRENCIES, day=DAY)
    assert len(fake_server.requests("/v1")) == 3

    fake_server.reset()
    fake_server.default = Fault(502)
    with pytest.raises(ProviderError, match="every one of 1 prices batch"):
        http(fake_server, max_retries=0).fetch_prices(INSTRUMENTS, day=DAY)
    assert len(fake_server.requests("/market/prices")) == 1


def test_client_errors_are_not_retried(fake_server: FakeMarketServer) -> None:
    fake_server.default = Fault(404, body=b'{"message": "not found"}')

    with pytest.raises(ProviderError, match=r"HTTP 404 \(not retried\)"):
        http(fake_server, max_retries=3).fetch_rates(CURRENCIES, day=DAY)
    assert len(fake_server.requests()) == 1


def test_429_waits_as_long_as_retry_after_says(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    fake_server.plan(throttled("1"))

    result = http(fake_server, backoff_base=0.0).fetch_rates(CURRENCIES, day=DAY)

    assert result.usd_to == dataset.rates
    first, second = fake_server.requests("/v1")
    assert second.at - first.at >= 0.9  # Retry-After: 1, not the 0 s backoff


def test_retry_after_longer_than_we_wait_gives_up_at_once(fake_server: FakeMarketServer) -> None:
    fake_server.plan(throttled("120"))

    with pytest.raises(ProviderError, match="Retry-After 120s exceeds the 5s we wait"):
        http(fake_server).fetch_rates(CURRENCIES, day=DAY)
    assert len(fake_server.requests()) == 1


def test_retry_after_is_read_as_seconds_or_an_http_date() -> None:
    now = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)

    assert retry_after_seconds("7") == 7.0
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=30)), now=now) == 30.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=30)), now=now) == 0.0
    assert retry_after_seconds("soon") is None
    assert retry_after_seconds(None) is None


def test_backoff_doubles_with_jitter_and_is_capped() -> None:
    options = HttpOptions(backoff_base=0.5, backoff_max=4.0)

    for attempt, step in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (8, 4.0)]:
        delays = {options.backoff(attempt) for _ in range(50)}
        assert all(step / 2 <= d <= step for d in delays)
        assert len(delays) > 1  # jittered


# -- timeouts and dead servers ----------------------------------------------------------------


def test_a_slow_answer_within_the_timeout_is_fine(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    fake_server.default = slow(0.3)

    result = http(fake_server, timeout=2.0).fetch_prices(INSTRUMENTS, day=DAY)

    assert result.quotes == dataset.quotes and result.errors == []
    assert len(fake_server.requests()) == 1


def test_a_timeout_is_retried_then_reported(fake_server: FakeMarketServer) -> None:
    fake_server.default = slow(1.0)

    with pytest.raises(ProviderError, match=r"failed after 2 attempt\(s\): timed out"):
        http(fake_server, timeout=0.2, max_retries=1).fetch_rates(CURRENCIES, day=DAY)
    assert len(fake_server.requests()) == 2


def test_a_closed_port_fails_after_bounded_retries() -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    provider = HttpProvider(dead, dead, options=dataclasses.replace(FAST, max_retries=2))

    started = time.monotonic()
    with pytest.raises(
        ProviderError, match=r"failed after 3 attempt\(s\): transport error: ConnectError"
    ):
        provider.fetch_rates(CURRENCIES, day=DAY)
    assert time.monotonic() - started < 2
    assert provider.health().ok is False


def test_a_server_that_never_answers_times_out() -> None:
    with silent_listener() as url:
        provider = HttpProvider(
            url, url, options=dataclasses.replace(FAST, timeout=0.2, max_retries=1)
        )
        with pytest.raises(ProviderError, match="timed out"):
            provider.fetch_prices(INSTRUMENTS, day=DAY)


# -- rate limit, batching, concurrency -----------------------------------------------------------


def test_the_rate_limit_holds_at_the_server(fake_server: FakeMarketServer) -> None:
    rate = 25.0
    many = [("NYSE", f"S{i:03d}") for i in range(50)]

    started = time.monotonic()
    result = http(fake_server, batch_size=1, rate_limit=rate, concurrency=8).fetch_prices(
        many, day=DAY
    )
    elapsed = time.monotonic() - started

    arrivals = sorted(s.at for s in fake_server.requests("/market/prices"))
    assert len(arrivals) == 50 and len(result.missing) == 50
    busiest = max(sum(1 for t in arrivals if start <= t < start + 1.0) for start in arrivals)
    # Sent 1/rate apart, so rate + 1 per second; one more for arrival jitter on a busy box.
    assert busiest <= rate + 2
    assert (len(arrivals) - 1) / (arrivals[-1] - arrivals[0]) <= rate * 1.05
    assert elapsed >= (len(arrivals) - 1) / rate * 0.95


def test_each_distinct_instrument_is_fetched_once_in_capped_batches(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    asked = INSTRUMENTS * 3

    result = http(fake_server, batch_size=3).fetch_prices(asked, day=DAY)

    seen = fake_server.requests("/market/prices")
    assert len(seen) == 3  # 8 distinct instruments, at most 3 per request
    assert all(len(s.instruments) <= 3 for s in seen)
    sent = [i for s in seen for i in s.instruments]
    assert sorted(sent) == sorted(INSTRUMENTS)
    assert result.quotes == dataset.quotes


def test_batches_are_in_flight_concurrently(fake_server: FakeMarketServer) -> None:
    fake_server.default = slow(0.3)

    http(fake_server, batch_size=2, concurrency=4).fetch_fundamentals(INSTRUMENTS, day=DAY)

    assert len(fake_server.requests()) == 4
    assert fake_server.max_in_flight >= 2


def test_a_past_day_asks_frankfurter_for_that_date(fake_server: FakeMarketServer) -> None:
    provider = http(fake_server)

    past = provider.fetch_rates(["BRL"], day=DAY - timedelta(days=400))
    today = provider.fetch_rates(["EUR", "BRL"], day=datetime.now(UTC).date())

    first, second = fake_server.requests("/v1")
    assert first.path == f"/v1/{(DAY - timedelta(days=400)).isoformat()}"
    assert dict(first.query) == {"base": "USD", "symbols": "BRL"}
    assert second.path == "/v1/latest" and dict(second.query)["symbols"] == "BRL,EUR"
    assert past.rate_date == DAY - timedelta(days=400) and today.rate_date == DAY


def test_redirects_are_followed(fake_server: FakeMarketServer, dataset: Dataset) -> None:
    moved = HttpProvider(f"{fake_server.base_url}/moved", fake_server.prices_url, options=FAST)

    today = datetime.now(UTC).date()

    assert moved.fetch_rates(CURRENCIES, day=today).usd_to == dataset.rates
    assert [s.path for s in fake_server.requests()] == ["/moved/latest", "/v1/latest"]


def test_a_call_from_inside_an_event_loop_still_works(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    async def inside() -> Any:
        return http(fake_server).fetch_rates(CURRENCIES, day=DAY)

    assert asyncio.run(inside()).usd_to == dataset.rates


# -- circuit breaker ----------------------------------------------------------------------------


def test_the_breaker_opens_then_half_opens_then_closes(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    provider = http(
        fake_server,
        batch_size=1,
        max_retries=0,
        breaker_threshold=3,
        breaker_cooldown=0.5,
        concurrency=1,
    )
    fake_server.default = Fault(500)

    with pytest.raises(ProviderError):
        provider.fetch_prices(INSTRUMENTS, day=DAY)
    assert len(fake_server.requests()) == 3  # then it stopped hammering
    assert breaker_state(provider.prices.breaker) is BreakerState.OPEN

    with pytest.raises(ProviderError):
        provider.fetch_prices(INSTRUMENTS, day=DAY)
    assert len(fake_server.requests()) == 3  # open: refused without a request

    time.sleep(0.6)
    assert breaker_state(provider.prices.breaker) is BreakerState.HALF_OPEN
    fake_server.default = None  # the service recovered
    result = provider.fetch_prices(INSTRUMENTS, day=DAY)

    assert result.quotes == dataset.quotes
    assert breaker_state(provider.prices.breaker) is BreakerState.CLOSED
    assert len(fake_server.requests()) == 3 + len(INSTRUMENTS)


def test_a_failed_probe_opens_the_breaker_again(fake_server: FakeMarketServer) -> None:
    # A cool-down long enough that a slow probe on a busy machine cannot outlast it.
    provider = http(fake_server, max_retries=0, breaker_threshold=2, breaker_cooldown=1.5)
    fake_server.default = Fault(500)
    for _ in range(2):
        with pytest.raises(ProviderError):
            provider.fetch_rates(CURRENCIES, day=DAY)
    assert breaker_state(provider.rates.breaker) is BreakerState.OPEN

    time.sleep(1.55)
    with pytest.raises(ProviderError, match="HTTP 500"):
        provider.fetch_rates(CURRENCIES, day=DAY)  # the probe goes out and fails
    assert breaker_state(provider.rates.breaker) is BreakerState.OPEN
    with pytest.raises(CircuitOpenError, match="circuit open"):
        provider.fetch_rates(CURRENCIES, day=DAY)
    assert len(fake_server.requests()) == 3
    # Prices use another service with a breaker of its own.
    assert breaker_state(provider.prices.breaker) is BreakerState.CLOSED


def test_breaker_opens_lets_one_probe_through_and_closes() -> None:
    breaker = circuit_breaker("svc", threshold=2, cooldown=0.2)

    def fail() -> None:
        with breaker.calling():
            raise OSError("down")

    with pytest.raises(OSError):
        fail()
    with breaker.calling():
        pass  # a success resets the count
    for _ in range(2):
        with pytest.raises(OSError):  # the call's own error, also when it trips the breaker
            fail()
    assert breaker_state(breaker) is BreakerState.OPEN
    with pytest.raises(pybreaker.CircuitBreakerError) as refused:
        fail()
    assert re.fullmatch(
        r"circuit open after 2 consecutive failures; next probe in 0\.[12]s",
        refusal(breaker, refused.value),
    )

    time.sleep(0.25)
    assert breaker_state(breaker) is BreakerState.HALF_OPEN
    with breaker.calling():  # the one probe
        with pytest.raises(pybreaker.CircuitBreakerError, match="probe request is already"):
            with breaker.calling():
                pass
    assert breaker_state(breaker) is BreakerState.CLOSED
    with pytest.raises(OSError):
        fail()
    assert breaker_state(breaker) is BreakerState.CLOSED  # the success reset the count


def test_an_open_breaker_is_reported_once_per_call(fake_server: FakeMarketServer) -> None:
    provider = http(fake_server, batch_size=1, max_retries=0, breaker_threshold=2, concurrency=1)
    fake_server.plan(None, Fault(500), Fault(500))

    result = provider.fetch_prices(INSTRUMENTS, day=DAY)

    assert len(result.quotes) == 1 and len(result.missing) == len(INSTRUMENTS) - 1
    refused = [e for e in result.errors if "not sent" in e]
    assert refused == [
        "http-prices: 5 of 8 batch(es) not sent: circuit open (2 consecutive failures)"
    ]
    assert len(fake_server.requests()) == 3


# -- malformed answers --------------------------------------------------------------------------


def test_a_body_that_is_not_json_names_the_provider_and_field(
    fake_server: FakeMarketServer,
) -> None:
    fake_server.plan(malformed())

    with pytest.raises(ProviderError) as raised:
        http(fake_server).fetch_rates(CURRENCIES, day=datetime.now(UTC).date())

    assert str(raised.value).startswith("http-rates: body: GET /latest: the body is not JSON")
    assert raised.value.provider == "http-rates" and raised.value.field == "body"


def test_a_bad_rate_names_the_currency(fake_server: FakeMarketServer) -> None:
    def corrupt(answer: Any) -> Any:
        answer["rates"]["BRL"] = "five"
        return answer

    fake_server.plan(patched(corrupt))

    with pytest.raises(
        ProviderError, match=r"http-rates: rates.BRL: must be a decimal string, got 'five'"
    ):
        http(fake_server).fetch_rates(CURRENCIES, day=DAY)


def test_rates_in_another_base_are_refused(fake_server: FakeMarketServer) -> None:
    fake_server.plan(patched(lambda answer: {**answer, "base": "EUR"}))

    with pytest.raises(ProviderError, match=r"http-rates: base: must be USD .* \(got 'EUR'\)"):
        http(fake_server).fetch_rates(CURRENCIES, day=DAY)


def test_frankfurter_amounts_other_than_one_are_divided_out(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    def hundred(answer: Any) -> Any:
        answer["amount"] = 100
        answer["rates"] = {k: float(dataset.rates[k] * 100) for k in answer["rates"]}
        return answer

    fake_server.plan(patched(hundred))

    result = http(fake_server).fetch_rates(["EUR"], day=DAY)

    assert result.usd_to["EUR"] == dataset.rates["EUR"]


def test_a_json_number_price_is_refused_naming_the_field(fake_server: FakeMarketServer) -> None:
    def floats(answer: Any) -> Any:
        answer["prices"][1]["price"] = 61.2
        return answer

    fake_server.plan(patched(floats))

    result = http(fake_server).fetch_prices(INSTRUMENTS, day=DAY)

    assert result.errors == [
        'http-prices: prices[1].price: must be a decimal string such as "61.20", '
        "got the JSON number 61.2"
    ]
    assert result.missing == [INSTRUMENTS[1]]
    assert len(result.quotes) == len(INSTRUMENTS) - 1


def test_a_malformed_batch_does_not_spoil_the_others(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    fake_server.plan(None, patched(lambda answer: {"prices": "soon"}), None)

    result = http(fake_server, batch_size=3, concurrency=1).fetch_prices(INSTRUMENTS, day=DAY)

    assert result.errors == ["http-prices: prices: must be a list (got 'soon')"]
    assert result.missing == INSTRUMENTS[3:6]
    assert result.quotes == {i: q for i, q in dataset.quotes.items() if i not in INSTRUMENTS[3:6]}


def test_every_batch_malformed_raises(fake_server: FakeMarketServer) -> None:
    fake_server.default = malformed(b"<html>gateway</html>")

    with pytest.raises(
        ProviderError, match=r"http-prices: .*body: POST /fundamentals: the body is not JSON"
    ):
        http(fake_server).fetch_fundamentals(INSTRUMENTS, day=DAY)


def test_fundamentals_items_are_checked_per_metric(
    fake_server: FakeMarketServer, dataset: Dataset
) -> None:
    def mangle(answer: Any) -> Any:
        items = answer["fundamentals"]
        items[0]["metrics"]["dividend_yeild"] = "3.1"
        items[1]["metrics"]["pe_ratio"] = 15
        del items[2]["metrics"]["roe"]  # absent = null
        items[3]["symbol"] = "NOT-ASKED"
        return answer

    fake_server.plan(patched(mangle))

    result = http(fake_server).fetch_fundamentals(INSTRUMENTS, day=DAY)

    assert result.errors == [
        "http-prices: fundamentals[0].metrics.dividend_yeild: is not a known metric",
        "http-prices: fundamentals[1].metrics.pe_ratio: must be a decimal string such as "
        '"61.20", got the JSON number 15',
        "http-prices: fundamentals[3]: B3:NOT-ASKED was not asked for",
    ]
    assert result.missing == [INSTRUMENTS[0], INSTRUMENTS[1], INSTRUMENTS[3]]
    assert result.values[INSTRUMENTS[2]]["roe"] is None
    assert result.values[INSTRUMENTS[4]] == dataset.fundamentals[INSTRUMENTS[4]]


def test_health_checks_both_services(fake_server: FakeMarketServer) -> None:
    health = http(fake_server).health()

    assert health.ok
    assert "http-rates: GET /currencies HTTP 200" in health.detail
    assert "http-prices: GET /health HTTP 200" in health.detail
