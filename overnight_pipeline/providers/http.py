"""`MARKET_DATA=http`: rates from a Frankfurter v1-compatible service (`RATES_URL`), prices
and fundamentals from our JSON contract (`PRICES_URL`, docs/PROVIDERS.md).

Each synchronous call runs one asyncio loop with one httpx.AsyncClient: batches go out
concurrently (bounded), every request passes a client-side rate limit (aiolimiter) and a
circuit breaker (pybreaker, `resilience.circuit_breaker`), and failed requests are retried by
tenacity with exponential backoff and jitter, or as long as a 429's Retry-After says.
"""

from __future__ import annotations

import asyncio
import json
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

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers import parsing
from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    PricesResult,
    ProviderError,
    Quote,
    RatesResult,
    batches,
    distinct,
    label,
    utcnow,
    wanted_currencies,
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
_METRIC_SET = frozenset(METRICS)


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


@dataclass
class _BatchOutcome:
    found: dict[Instrument, Any]
    errors: list[str]
    failure: ProviderError | None = None  # the batch got no usable answer at all


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


def _json_body(service: str, what: str, response: httpx.Response, **kwargs: Any) -> Any:
    try:
        return json.loads(response.content, **kwargs)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError(
            service, f"{what}: the body is not JSON", field="body", value=response.text[:120]
        ) from None


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
        body = _json_body(service.name, f"GET {path}", response, parse_float=Decimal)
        return self._parse_rates(body, wanted, fetched)

    def _parse_rates(self, body: Any, wanted: list[str], fetched: datetime) -> RatesResult:
        name = self.rates.name
        if not isinstance(body, dict):
            raise ProviderError(name, "must be a JSON object", field="body", value=body)

        def field(key: str, parse: Callable[[Any], T]) -> T:
            if key not in body:
                raise ProviderError(name, "is missing", field=key)
            try:
                return parse(body[key])
            except ValueError as exc:
                raise ProviderError(name, str(exc), field=key) from None

        base = field("base", parsing.currency)
        if base != "USD":
            raise ProviderError(name, "must be USD (we ask for base=USD)", field="base", value=base)
        amount = field("amount", parsing.positive_decimal) if "amount" in body else Decimal(1)
        rate_date = field("date", parsing.iso_date)
        rates = body.get("rates")
        if not isinstance(rates, dict):
            raise ProviderError(name, "must be an object of currency: rate", field="rates")
        usd_to: dict[str, Decimal] = {}
        for currency in wanted:
            if currency not in rates:
                continue
            try:
                usd_to[currency] = parsing.positive_decimal(rates[currency]) / amount
            except ValueError as exc:
                raise ProviderError(name, str(exc), field=f"rates.{currency}") from None
        return RatesResult(
            usd_to=usd_to,
            source=self.name,
            as_of=fetched,
            rate_date=rate_date,
            missing=[c for c in wanted if c not in usd_to],
        )

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
    ) -> _BatchOutcome:
        service = self.prices
        body = {
            "date": day.isoformat(),
            "instruments": [{"market": m, "symbol": s} for m, s in part],
        }
        async with session.slots:
            try:
                response = await session.request(service, "POST", f"/{kind}", body=body)
                fetched = utcnow()
                payload = _json_body(service.name, f"POST /{kind}", response)
                if kind == "prices":
                    return self._parse_prices(payload, part, fetched)
                return self._parse_fundamentals(payload, part)
            except ProviderError as exc:
                return _BatchOutcome({}, [], exc)

    def _items(self, payload: Any, key: str) -> list[Any]:
        name = self.prices.name
        if not isinstance(payload, dict):
            raise ProviderError(name, "must be a JSON object", field="body", value=payload)
        items = payload.get(key)
        if not isinstance(items, list):
            raise ProviderError(name, "must be a list", field=key, value=items)
        return items

    def _item_instrument(
        self, item: Any, where: str, part: Sequence[Instrument], errors: list[str]
    ) -> Instrument | None:
        name = self.prices.name
        if not isinstance(item, dict):
            errors.append(str(ProviderError(name, "must be an object", field=where, value=item)))
            return None
        try:
            inst = (parsing.text(item.get("market")), parsing.text(item.get("symbol")))
        except ValueError as exc:
            errors.append(str(ProviderError(name, str(exc), field=f"{where}.market/symbol")))
            return None
        if inst not in part:
            errors.append(str(ProviderError(name, f"{label(inst)} was not asked for", field=where)))
            return None
        return inst

    def _parse_prices(
        self, payload: Any, part: Sequence[Instrument], fetched: datetime
    ) -> _BatchOutcome:
        name = self.prices.name
        found: dict[Instrument, Any] = {}
        errors: list[str] = []
        for i, item in enumerate(self._items(payload, "prices")):
            where = f"prices[{i}]"
            inst = self._item_instrument(item, where, part, errors)
            if inst is None:
                continue
            try:
                key = "price"
                price = parsing.positive_decimal(item.get("price"), strings_only=True)
                key = "currency"
                currency = parsing.currency(item.get("currency"))
                key = "as_of"
                stamp = parsing.timestamp(item["as_of"]) if "as_of" in item else fetched
            except ValueError as exc:
                errors.append(str(ProviderError(name, str(exc), field=f"{where}.{key}")))
                continue
            found[inst] = Quote(price, currency, stamp)
        return _BatchOutcome(found, errors)

    def _parse_fundamentals(self, payload: Any, part: Sequence[Instrument]) -> _BatchOutcome:
        name = self.prices.name
        found: dict[Instrument, Any] = {}
        errors: list[str] = []
        for i, item in enumerate(self._items(payload, "fundamentals")):
            where = f"fundamentals[{i}]"
            inst = self._item_instrument(item, where, part, errors)
            if inst is None:
                continue
            metrics = item.get("metrics")
            if not isinstance(metrics, dict):
                errors.append(
                    str(ProviderError(name, "must be an object", field=f"{where}.metrics"))
                )
                continue
            values: dict[str, Decimal | None] = dict.fromkeys(METRICS)
            bad = False
            for metric, raw in metrics.items():
                field = f"{where}.metrics.{metric}"
                if metric not in _METRIC_SET:
                    errors.append(str(ProviderError(name, "is not a known metric", field=field)))
                    bad = True
                    continue
                try:
                    values[metric] = parsing.optional_decimal(raw, strings_only=True)
                except ValueError as exc:
                    errors.append(str(ProviderError(name, str(exc), field=field)))
                    bad = True
            if not bad:
                found[inst] = values
        return _BatchOutcome(found, errors)

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
