"""A fake market-data service for the provider tests and the benchmark: a real local HTTP
server.

One Starlette app serves a Frankfurter v1 look-alike under `/v1` (RATES_URL) and our JSON
contract under `/market` (PRICES_URL), from a fixed dataset. Faults are scripted per request
(status, body, headers, delay), every request is recorded with its arrival time, and the
app runs under uvicorn in a background thread on a free 127.0.0.1 port.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.base import Instrument, Quote
from overnight_pipeline.providers.synthetic import SyntheticProvider


@dataclass(frozen=True)
class Dataset:
    """What every provider kind of the contract suite is loaded with."""

    day: date
    rates: dict[str, Decimal]
    quotes: dict[Instrument, Quote]
    fundamentals: dict[Instrument, dict[str, Decimal | None]]


def synthetic_dataset(
    instruments: Sequence[Instrument], currencies: Sequence[str], day: date
) -> Dataset:
    synthetic = SyntheticProvider()
    return Dataset(
        day=day,
        rates=synthetic.fetch_rates(currencies, day=day).usd_to,
        quotes=synthetic.fetch_prices(instruments, day=day).quotes,
        fundamentals=synthetic.fetch_fundamentals(instruments, day=day).values,
    )


@dataclass
class Fault:
    """How to answer one request instead of (or on top of) the normal answer."""

    status: int = 500
    body: bytes | None = None  # raw body; None = the normal answer (status 200) or an error
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before answering
    patch: Callable[[Any], Any] | None = None  # rewrites the normal JSON answer


def malformed(body: bytes = b"{this is not json") -> Fault:
    return Fault(status=200, body=body)


def patched(patch: Callable[[Any], Any]) -> Fault:
    return Fault(status=200, patch=patch)


def slow(delay: float) -> Fault:
    return Fault(status=200, delay=delay)


def throttled(retry_after: str) -> Fault:
    return Fault(status=429, headers={"Retry-After": retry_after})


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    at: float  # time.monotonic() on arrival
    instruments: tuple[Instrument, ...] = ()
    query: tuple[tuple[str, str], ...] = ()


class FakeMarketServer:
    """The app and its script; `base_url` is set by `serve`."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self.base_url = ""
        self.reset()
        self.app = Starlette(
            routes=[
                Route("/moved/{rest:path}", self._moved, methods=["GET"]),
                Route("/v1/currencies", self._currencies, methods=["GET"]),
                Route("/v1/{day}", self._rates, methods=["GET"]),
                Route("/market/health", self._health, methods=["GET"]),
                Route("/market/prices", self._prices, methods=["POST"]),
                Route("/market/fundamentals", self._fundamentals, methods=["POST"]),
            ]
        )

    @property
    def rates_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def prices_url(self) -> str:
        return f"{self.base_url}/market"

    def reset(self, dataset: Dataset | None = None) -> None:
        self.dataset = dataset or self.dataset
        self.seen: list[Seen] = []
        self.planned: deque[Fault | None] = deque()
        self.default: Fault | None = None
        self.in_flight = 0
        self.max_in_flight = 0

    def plan(self, *faults: Fault | None) -> None:
        """Script the next requests, in order; None answers normally."""
        self.planned.extend(faults)

    def requests(self, prefix: str = "/") -> list[Seen]:
        return [s for s in self.seen if s.path.startswith(prefix)]

    # -- handlers -----------------------------------------------------------------------------

    async def _answer(
        self, request: Request, normal: Callable[[Any], Any], instruments: tuple[Instrument, ...]
    ) -> Response:
        self.seen.append(
            Seen(
                request.method,
                request.url.path,
                time.monotonic(),
                instruments,
                tuple(request.query_params.multi_items()),
            )
        )
        fault = self.planned.popleft() if self.planned else self.default
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if fault is not None and fault.delay:
                await asyncio.sleep(fault.delay)
            if fault is not None and (fault.status != 200 or fault.body is not None):
                body = fault.body if fault.body is not None else b'{"message":"injected"}'
                return Response(
                    body, fault.status, headers=fault.headers, media_type="application/json"
                )
            answer = normal(None)
            if fault is not None and fault.patch is not None:
                answer = fault.patch(answer)
            return Response(json.dumps(answer), 200, media_type="application/json")
        finally:
            self.in_flight -= 1

    async def _rates(self, request: Request) -> Response:
        day = request.path_params["day"]
        symbols = [s for s in request.query_params.get("symbols", "").split(",") if s]

        def normal(_: Any) -> Any:
            if day != "latest":
                date.fromisoformat(day)
            # Frankfurter sends JSON numbers; a rate's shortest float repr keeps its digits.
            rates = {s: float(self.dataset.rates[s]) for s in symbols if s in self.dataset.rates}
            return {
                "amount": 1.0,
                "base": request.query_params.get("base", "EUR"),
                "date": self.dataset.day.isoformat() if day == "latest" else day,
                "rates": rates,
            }

        return await self._answer(request, normal, ())

    async def _moved(self, request: Request) -> Response:
        """A service that moved: 308 to the same path and query under /v1."""
        target = f"/v1/{request.path_params['rest']}"
        if request.url.query:
            target += f"?{request.url.query}"
        self.seen.append(Seen(request.method, request.url.path, time.monotonic()))
        return RedirectResponse(target, status_code=308)

    async def _currencies(self, request: Request) -> Response:
        return await self._answer(
            request, lambda _: {c: c for c in ["USD", *self.dataset.rates]}, ()
        )

    async def _health(self, request: Request) -> Response:
        return await self._answer(request, lambda _: {"status": "ok"}, ())

    async def _instruments(self, request: Request) -> tuple[Instrument, ...]:
        body = await request.json()
        return tuple((i["market"], i["symbol"]) for i in body["instruments"])

    async def _prices(self, request: Request) -> Response:
        asked = await self._instruments(request)

        def normal(_: Any) -> Any:
            quotes = self.dataset.quotes
            return {
                "date": self.dataset.day.isoformat(),
                "prices": [
                    {
                        "market": m,
                        "symbol": s,
                        "price": format(quotes[(m, s)].price, "f"),
                        "currency": quotes[(m, s)].currency,
                        "as_of": quotes[(m, s)].as_of.isoformat(),
                    }
                    for m, s in asked
                    if (m, s) in quotes
                ],
                "missing": [{"market": m, "symbol": s} for m, s in asked if (m, s) not in quotes],
            }

        return await self._answer(request, normal, asked)

    async def _fundamentals(self, request: Request) -> Response:
        asked = await self._instruments(request)

        def normal(_: Any) -> Any:
            values = self.dataset.fundamentals
            return {
                "date": self.dataset.day.isoformat(),
                "fundamentals": [
                    {
                        "market": m,
                        "symbol": s,
                        "metrics": {
                            k: None if values[(m, s)][k] is None else format(values[(m, s)][k], "f")
                            for k in METRICS
                        },
                    }
                    for m, s in asked
                    if (m, s) in values
                ],
            }

        return await self._answer(request, normal, asked)


@contextmanager
def serve(app: Any, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Serve `app` with uvicorn in a background thread on a free port; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        ws="none",
        loop="asyncio",
        timeout_graceful_shutdown=1,
        backlog=2048,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, daemon=True, name="fake-market"
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the local test server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@contextmanager
def running(dataset: Dataset) -> Iterator[FakeMarketServer]:
    fake = FakeMarketServer(dataset)
    with serve(fake.app) as base_url:
        fake.base_url = base_url
        yield fake


def closed_port() -> int:
    """A loopback port nothing listens on: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@contextmanager
def silent_listener() -> Iterator[str]:
    """A port that accepts TCP connections (the kernel's backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


def now_utc() -> datetime:
    return datetime.now(UTC)
