"""`MARKET_DATA=http`: rates from a Frankfurter v1-compatible service (`RATES_URL`), prices
and fundamentals from our JSON contract (`PRICES_URL`, docs/PROVIDERS.md).

Each synchronous call runs one asyncio loop with one httpx.AsyncClient: batches go out
concurrently (bounded), every request passes a client-side rate limit (aiolimiter) and a
circuit breaker (pybreaker, `resilience.circuit_breaker`), and failed requests are retried by
tenacity with exponential backoff and jitter, or as long as a 429's Retry-After says.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import pybreaker
from aiolimiter import AsyncLimiter
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    stop_after_attempt,
)
from tenacity.stop import stop_base

from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    PricesResult,
    ProviderError,
    RatesResult,
    batches,
    distinct,
    utcnow,
    wanted_currencies,
)
from overnight_pipeline.providers.http_bodies import (
    BatchOutcome,
    json_body,
    parse_fundamentals,
    parse_prices,
    parse_rates,
)
from overnight_pipeline.providers.resilience import (
    BreakerState,
    CircuitOpenError,
    HttpOptions,
    breaker_state,
    circuit_breaker,
    describe,
    refusal,
    retry_after_seconds,
)

T = TypeVar("T")
USER_AGENT = "overnight-pipeline/0.1 (+docs/PROVIDERS.md)"


def run_sync(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine to completion from synchronous code, even inside a running loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(_await(make))
    # Called from async code (a notebook, an async Dagster op): use a loop of our own.
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="provider") as pool:
        return pool.submit(lambda: asyncio.run(_await(make))).result()


async def _await(make: Callable[[], Awaitable[T]]) -> T:
    return await make()


@dataclass
class _Service:
    """One remote API (rates or prices) with its own breaker; limits are per call."""

    name: str
    base_url: str
    breaker: pybreaker.CircuitBreaker


class _Session:
    """The async state of one synchronous call: client, per-service limiter, semaphore."""

    def __init__(self, provider: HttpProvider) -> None:
        opts = provider.options
        self.provider = provider
        self.client = httpx.AsyncClient(
            timeout=httpx.Timeout(opts.timeout, connect=opts.connect_timeout),
            headers={"User-Agent": USER_AGENT, "Accept": "application/json"},
            transport=provider.transport,
            limits=httpx.Limits(max_connections=opts.concurrency),
            follow_redirects=True,  # e.g. a Frankfurter host that moved its API
        )
        # One token at a time (no burst): requests are evenly spaced at 1/rate seconds, so
        # any one-second window sees at most rate + 1 requests. aiolimiter binds to a loop,
        # hence a limiter per call rather than per provider.
        self.limiters = {name: AsyncLimiter(1, 1 / opts.rate_limit) for name in provider.services}
        self.slots = asyncio.Semaphore(opts.concurrency)

    async def __aenter__(self) -> _Session:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()

    async def request(
        self,
        service: _Service,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: Any = None,
    ) -> httpx.Response:
        """A 2xx response, after retries; otherwise ProviderError naming the service."""
        opts = self.provider.options
        what = f"{method} {path}"

        def wait(state: RetryCallState) -> float:
            told = _told_to_wait(state)
            return told if told is not None else opts.backoff(state.attempt_number - 1)

        def waits_too_long(state: RetryCallState) -> bool:
            told = _told_to_wait(state)
            return told is not None and told > opts.retry_after_max

        retrying = AsyncRetrying(
            stop=stop_after_attempt(opts.max_retries + 1) | stop_when(waits_too_long),
            wait=wait,
            retry=retry_if_exception_type(_Retryable),
            sleep=asyncio.sleep,
            reraise=True,
        )
        attempts = 0
        try:
            async for attempt in retrying:
                attempts = attempt.retry_state.attempt_number
                with attempt:
                    return await self._attempt(service, method, path, params, body)
        except _Retryable as exc:
            if attempts > opts.max_retries or exc.retry_after is None:
                raise ProviderError(
                    service.name, f"{what} failed after {attempts} attempt(s): {exc.failure}"
                ) from None
            raise ProviderError(
                service.name,
                f"{what}: {exc.failure}; Retry-After {exc.retry_after:.0f}s exceeds the "
                f"{opts.retry_after_max:.0f}s we wait",
            ) from None
        raise AssertionError("tenacity ended without an outcome")  # pragma: no cover

    async def _attempt(
        self, service: _Service, method: str, path: str, params: Any, body: Any
    ) -> httpx.Response:
        """One request through the service's breaker and rate limit."""
        opts = self.provider.options
        try:
            with service.breaker.calling():
                await self.limiters[service.name].acquire()
                try:
                    response = await self.client.request(
                        method, service.base_url + path, params=params, json=body
                    )
                except httpx.TimeoutException as exc:
                    raise _Retryable(
                        f"timed out ({type(exc).__name__}, timeout {opts.timeout}s)"
                    ) from None
                except httpx.TransportError as exc:
                    raise _Retryable(f"transport error: {type(exc).__name__}: {exc}") from None
                if response.status_code >= 500:
                    raise _Retryable(f"HTTP {response.status_code}")
        except pybreaker.CircuitBreakerError as exc:
            raise CircuitOpenError(service.name, refusal(service.breaker, exc)) from None
        status = response.status_code
        if status < 300:
            return response
        if status == 429:
            # Alive but throttling us: not a breaker failure; wait as told.
            raise _Retryable(
                "HTTP 429 Too Many Requests",
                retry_after=retry_after_seconds(response.headers.get("Retry-After")),
            )
        raise ProviderError(
            service.name,
            f"{method} {path} answered HTTP {status} (not retried)",
            value=response.text[:200],
        )


class _Retryable(Exception):
    """A failed attempt worth another: a timeout, a transport error, a 5xx or a 429."""

    def __init__(self, failure: str, *, retry_after: float | None = None) -> None:
        super().__init__(failure)
        self.failure = failure
        self.retry_after = retry_after


class stop_when(stop_base):
    """Stop when `predicate` holds for the attempt that just failed."""

    def __init__(self, predicate: Callable[[RetryCallState], bool]) -> None:
        self.predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self.predicate(retry_state)


def _told_to_wait(state: RetryCallState) -> float | None:
    """The Retry-After of the attempt that just failed, if it said one."""
    exc = state.outcome.exception() if state.outcome is not None else None
    return exc.retry_after if isinstance(exc, _Retryable) else None


def _breaker_failure(exc: BaseException) -> bool:
    """What opens a service's circuit: a failed attempt (a 429 or a 4xx answer is a live
    service) and cancellation mid-request (a probe without a verdict counts as failed)."""
    return isinstance(exc, _Retryable) or not isinstance(exc, Exception)


class HttpProvider:
    """Both HTTP services behind the one interface; see docs/PROVIDERS.md for the contract."""

    def __init__(
        self,
        rates_url: str,
        prices_url: str,
        *,
        batch_size: int = 50,
        options: HttpOptions | None = None,
        name: str = "http",
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.name = name
        self.batch_size = batch_size
        self.options = options or HttpOptions()
        self.transport = transport
        self.rates = _Service(f"{name}-rates", rates_url.rstrip("/"), self._breaker("rates"))
        self.prices = _Service(f"{name}-prices", prices_url.rstrip("/"), self._breaker("prices"))
        self.services = {s.name: s for s in (self.rates, self.prices)}

    def _breaker(self, service: str) -> pybreaker.CircuitBreaker:
        return circuit_breaker(
            f"{self.name}-{service}",
            threshold=self.options.breaker_threshold,
            cooldown=self.options.breaker_cooldown,
            counts=_breaker_failure,
        )

    # -- rates (Frankfurter v1) -------------------------------------------------------------

    def fetch_rates(self, currencies: Collection[str], *, day: date) -> RatesResult:
        wanted = wanted_currencies(currencies)
        if not wanted:
            return RatesResult(usd_to={}, source=self.name, as_of=utcnow(), rate_date=day)
        return run_sync(lambda: self._fetch_rates(wanted, day))

    async def _fetch_rates(self, wanted: list[str], day: date) -> RatesResult:
        service = self.rates
        # Frankfurter: /latest for today, /YYYY-MM-DD for a past day (a backfill).
        path = "/latest" if day >= datetime.now(UTC).date() else f"/{day.isoformat()}"
        async with _Session(self) as session:
            response = await session.request(
                service, "GET", path, params={"base": "USD", "symbols": ",".join(wanted)}
            )
        fetched = utcnow()
        # Frankfurter sends rates as JSON numbers: read them as Decimal, never float.
        body = json_body(service.name, f"GET {path}", response, parse_float=Decimal)
        return parse_rates(self.rates.name, self.name, body, wanted, fetched)

    # -- prices and fundamentals (our JSON contract) -------------------------------------------

    def fetch_prices(self, instruments: Sequence[Instrument], *, day: date) -> PricesResult:
        wanted = distinct(instruments)
        found, errors = run_sync(lambda: self._fetch_all("prices", wanted, day))
        return PricesResult.of(wanted, found, errors=errors, source=self.name)

    def fetch_fundamentals(
        self, instruments: Sequence[Instrument], *, day: date
    ) -> FundamentalsResult:
        wanted = distinct(instruments)
        found, errors = run_sync(lambda: self._fetch_all("fundamentals", wanted, day))
        return FundamentalsResult.of(wanted, found, errors=errors, source=self.name)

    async def _fetch_all(
        self, kind: str, wanted: list[Instrument], day: date
    ) -> tuple[dict[Instrument, Any], list[str]]:
        if not wanted:
            return {}, []
        parts = batches(wanted, self.batch_size)
        async with _Session(self) as session:
            outcomes = await asyncio.gather(
                *(self._fetch_batch(session, kind, part, day) for part in parts)
            )
        found: dict[Instrument, Any] = {}
        errors: list[str] = []
        refused = 0
        for outcome in outcomes:
            found.update(outcome.found)
            if isinstance(outcome.failure, CircuitOpenError):
                refused += 1
            elif outcome.failure is not None:
                errors.append(str(outcome.failure))
            errors.extend(outcome.errors)
        if refused:
            errors.append(
                f"{self.prices.name}: {refused} of {len(parts)} batch(es) not sent: "
                f"{describe(self.prices.breaker)}"
            )
        failures = [o.failure for o in outcomes if o.failure is not None]
        if len(failures) == len(parts):
            first = failures[0]
            assert first is not None
            raise ProviderError(
                self.prices.name,
                f"every one of {len(parts)} {kind} batch(es) failed; first: {first}",
            ) from first
        return found, errors

    async def _fetch_batch(
        self, session: _Session, kind: str, part: Sequence[Instrument], day: date
    ) -> BatchOutcome:
        service = self.prices
        body = {
            "date": day.isoformat(),
            "instruments": [{"market": m, "symbol": s} for m, s in part],
        }
        async with session.slots:
            try:
                response = await session.request(service, "POST", f"/{kind}", body=body)
                fetched = utcnow()
                payload = json_body(service.name, f"POST /{kind}", response)
                if kind == "prices":
                    return parse_prices(self.prices.name, payload, part, fetched)
                return parse_fundamentals(self.prices.name, payload, part)
            except ProviderError as exc:
                return BatchOutcome({}, [], exc)

    # -- health -------------------------------------------------------------------------------

    def health(self) -> Health:
        return run_sync(self._health)

    async def _health(self) -> Health:
        checks = ((self.rates, "/currencies"), (self.prices, "/health"))
        lines: list[str] = []
        ok = True
        async with httpx.AsyncClient(
            timeout=httpx.Timeout(self.options.timeout, connect=self.options.connect_timeout),
            headers={"User-Agent": USER_AGENT},
            transport=self.transport,
            follow_redirects=True,
        ) as client:
            for service, path in checks:
                try:
                    response = await client.get(service.base_url + path)
                    reachable = response.status_code < 400
                    seen = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    reachable, seen = False, f"{type(exc).__name__}"
                closed = breaker_state(service.breaker) is BreakerState.CLOSED
                ok = ok and reachable and closed
                lines.append(f"{service.name}: GET {path} {seen}; {describe(service.breaker)}")
        return Health(ok, "; ".join(lines))
