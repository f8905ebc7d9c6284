"""`GET /metrics`: the Prometheus text format (prometheus-client), one registry per app.

Three kinds of values:
- per request (`RequestMetrics`, a raw ASGI wrapper in `DashboardApp`): requests by route
  template and status, and their durations; label children are resolved once per (route,
  status), so a request costs a dict lookup, a counter increment and a histogram
  observation, ≈ 2.5 µs (docs/PERFORMANCE.md, "Metrics on every request");
- per cache read (`CacheReads`, counted by `DashboardStore`): hit, miss, rejected (failed the
  cache contract) or redis_error (Redis failed, or was skipped by the open breaker);
- read at scrape time by custom collectors: the Redis breaker's state, and per market the
  outcomes of the overnight runs (`RunCollector`), from `overnight_job_runs` judged by
  `core.readiness` on the markets' exchange calendars, in two statements for every market,
  refreshed at most once per `ttl` seconds whatever the number of concurrent scrapes.

No label ever holds a user id: routes are templates, results and states closed sets.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

import anyio
import pybreaker
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from sqlalchemy import Engine
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from overnight_pipeline.core.markets import Market
from overnight_pipeline.core.readiness import READY, READY_PARTIAL, RunFact, judge
from overnight_pipeline.providers.resilience import BreakerState, breaker_state
from overnight_pipeline.storage import queries
from overnight_pipeline.storage.db import DB_ERRORS
from overnight_pipeline.storage.job_runs import run_facts

if TYPE_CHECKING:
    from dashboard_api.services import Services

log = logging.getLogger("dashboard_api")

UNMATCHED = "unmatched"  # the route label of a request no route matched (404, 431, ...)
# Seconds, fine below 10 ms where cache hits and misses fall (docs/PERFORMANCE.md,
# "Dashboard API").
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)
CACHE_RESULTS = ("hit", "miss", "rejected", "redis_error")
FINISHED = ("completed", "partial", "failed")
LOOKBACK = timedelta(days=35)
"""Sessions judged at each refresh: enough for the current month and the newest ready one."""
GRACE = timedelta(minutes=5)
"""A missed deadline counts this long after the open: a run that finished just before it is
recorded by the run sensor within seconds, and a counter must not go back down."""


class CacheReads:
    """`dashboard_cache_reads_total` by result, children resolved once (the hot path)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        counter = Counter(
            "dashboard_cache_reads",
            "Dashboard reads of a user's cache entry, by result: hit, miss, rejected (failed "
            "the cache contract) or redis_error (Redis failed or was skipped by its breaker).",
            ["result"],
            registry=registry,
        )
        self.hit = counter.labels("hit")
        self.miss = counter.labels("miss")
        self.rejected = counter.labels("rejected")
        self.redis_error = counter.labels("redis_error")


class RequestMetrics:
    """`dashboard_requests_total{route,status}` and `dashboard_request_duration_seconds{route}`
    for every HTTP request, called by `DashboardApp` around the whole app (so the 431/414
    answered before routing and the catch-all 500 are counted too)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.total = Counter(
            "dashboard_requests",
            "HTTP requests by route template and response status.",
            ["route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "dashboard_request_duration_seconds",
            "Time from the request to the end of its response body, by route template.",
            ["route"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        # (route label, status) -> the two children: labels() takes a lock and builds a key.
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def record(self, route: str, status: int, seconds: float) -> None:
        children = self._children.get((route, status))
        if children is None:
            children = (self.total.labels(route, str(status)), self.duration.labels(route))
            self._children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    async def measure(
        self, app: Callable[[Scope, Receive, Send], Any], scope: Scope, receive: Receive, send: Send
    ) -> None:
        """Run `app` on an HTTP request, recording it once its response body has gone out
        (work done after that, such as the dashboard's cache refill, is not the client's
        wait)."""
        started = time.perf_counter()
        status = 0
        done = False

        async def send_measured(message: Message) -> None:
            nonlocal status, done
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                done = True
                self.record(_route(scope), status, time.perf_counter() - started)
            await send(message)

        try:
            await app(scope, receive, send_measured)
        except BaseException:
            if not done:  # nothing (complete) was sent: the client sees the connection fail
                self.record(_route(scope), status or 500, time.perf_counter() - started)
            raise


def _route(scope: Scope) -> str:
    """The matched route's template (Starlette puts the route in the scope), never the
    path itself, whose ids would make a series per user."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class BreakerCollector:
    """`dashboard_redis_breaker_state{state}`: 1 for the Redis breaker's state now."""

    def __init__(self) -> None:
        self.breaker: pybreaker.CircuitBreaker | None = None

    def describe(self) -> Iterable[Metric]:
        yield self._family()

    def collect(self) -> Iterable[Metric]:
        family = self._family()
        if self.breaker is not None:
            now = breaker_state(self.breaker)
            for state in BreakerState:
                family.add_metric([state.value], 1.0 if state is now else 0.0)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "dashboard_redis_breaker_state",
            "The dashboard's Redis circuit breaker: 1 for its state (closed, open: Redis "
            "skipped, half-open: one request probing it), 0 for the others.",
            labels=["state"],
        )


@dataclass(frozen=True)
class MarketFigures:
    """One market's run-derived values (`market_figures`)."""

    last_ready: float  # epoch seconds the newest ready session's run finished; 0: none
    deadline_missed: int  # sessions of the current month (market time) whose open was missed
    runs: dict[str, int] = field(default_factory=dict)  # finished this month, by status
    users_failed: int | None = None  # of the newest finished run (None: none in LOOKBACK)


def month_start(market: Market, now: datetime) -> datetime:
    """Midnight of the first day of `now`'s month in the market's time zone."""
    local = now.astimezone(market.tz)
    return local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def lookback_keys(markets: Iterable[Market], now: datetime) -> list[tuple[str, date]]:
    """Each market's days from LOOKBACK ago to today (its local date)."""
    keys = []
    for market in markets:
        today = now.astimezone(market.tz).date()
        keys += [(market.code, today - timedelta(days=n)) for n in range(LOOKBACK.days + 1)]
    return keys


def market_figures(
    markets: Mapping[str, Market],
    facts: Mapping[tuple[str, date], list[RunFact]],
    finished: Iterable[queries.FinishedRun],
    now: datetime,
) -> dict[str, MarketFigures]:
    """Every market's figures at `now` from its runs' facts (`job_runs.run_facts` of
    `lookback_keys`) and the runs finished in LOOKBACK, judged by `core.readiness.judge`.

    The two counters cover the current month in the market's time zone and go back to 0 when
    the next one starts, which Prometheus' `increase()`/`rate()` read as a counter reset (as
    after a restart); a window sliding by the day would go down whenever an old miss left it,
    which they would read as a reset too and count as new misses.
    """
    figures = {}
    for code, market in markets.items():
        start = month_start(market, now)
        missed = 0
        newest_ready: tuple[date, datetime] | None = None
        for key in lookback_keys([market], now):
            verdict = judge(market, key[1], facts.get(key, []), now)
            if verdict.state in (READY, READY_PARTIAL) and verdict.finished_at is not None:
                if newest_ready is None or key[1] > newest_ready[0]:
                    newest_ready = (key[1], verdict.finished_at)
            elif (
                verdict.deadline_missed
                and verdict.deadline is not None
                and key[1] >= start.date()
                and now >= verdict.deadline + GRACE
            ):
                missed += 1
        runs = dict.fromkeys(FINISHED, 0)
        users_failed = None
        for run in finished:
            if run.market != code:
                continue
            if run.completed_at >= start:
                runs[run.status] = runs.get(run.status, 0) + 1
            users_failed = run.users_failed  # oldest first: the newest one stays
        figures[code] = MarketFigures(
            last_ready=newest_ready[1].timestamp() if newest_ready else 0.0,
            deadline_missed=missed,
            runs=runs,
            users_failed=users_failed,
        )
    return figures


@dataclass(frozen=True)
class _Snapshot:
    at: float  # time.monotonic() of the read
    figures: dict[str, MarketFigures]
    ok: bool


class RunCollector:
    """The overnight runs' outcomes per market (`market_figures`), read from the app database
    at most once per `ttl` seconds: concurrent scrapes wait for the one read in progress
    (a lock: scrapes run in worker threads, or in the separate port's server thread)."""

    def __init__(
        self,
        markets: Mapping[str, Market],
        *,
        ttl: float,
        clock: Callable[[], datetime],
    ) -> None:
        self.markets = dict(markets)
        self.ttl = ttl
        self.clock = clock
        self.engine: Engine | None = None
        self.reads = 0  # statements' round trips, for tests: two per refresh
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None

    def snapshot(self) -> _Snapshot | None:
        current = self._snapshot
        if current is not None and time.monotonic() - current.at < self.ttl:
            return current
        with self._lock:
            current = self._snapshot
            if current is not None and time.monotonic() - current.at < self.ttl:
                return current  # refreshed while this scrape waited
            if self.engine is None:
                return current
            self._snapshot = self._read(self.engine, current)
            return self._snapshot

    def _read(self, engine: Engine, previous: _Snapshot | None) -> _Snapshot:
        now = self.clock()
        since = now - LOOKBACK
        try:
            with engine.connect() as conn:
                facts = run_facts(conn, lookback_keys(self.markets.values(), now))
                finished = queries.finished_runs(conn, since=since)
            self.reads += 2
        except DB_ERRORS as exc:
            log.warning("metrics: cannot read overnight_job_runs (%s)", type(exc).__name__)
            # The last values stay (a counter must not vanish), marked stale by _up = 0.
            figures = previous.figures if previous is not None else {}
            return _Snapshot(time.monotonic(), figures, ok=False)
        return _Snapshot(
            time.monotonic(), market_figures(self.markets, facts, finished, now), ok=True
        )

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        snap = self.snapshot()
        families = self._families()
        up, last_ready, missed, runs, failed = families
        up.add_metric([], 1.0 if snap is not None and snap.ok else 0.0)
        for code, fig in sorted((snap.figures if snap else {}).items()):
            last_ready.add_metric([code], fig.last_ready)
            missed.add_metric([code], fig.deadline_missed)
            for status in FINISHED:
                runs.add_metric([code, status], fig.runs.get(status, 0))
            if fig.users_failed is not None:
                failed.add_metric([code], fig.users_failed)
        return families

    @staticmethod
    def _families() -> tuple[
        GaugeMetricFamily,
        GaugeMetricFamily,
        CounterMetricFamily,
        CounterMetricFamily,
        GaugeMetricFamily,
    ]:
        return (
            GaugeMetricFamily(
                "overnight_job_runs_up",
                "1 when the last read of overnight_job_runs succeeded (else the overnight_ "
                "values are those of the last read that did).",
            ),
            GaugeMetricFamily(
                "overnight_last_ready_timestamp_seconds",
                "When the run of the market's newest ready session (finished, cache written, "
                f"before its open) finished; 0: none in the last {LOOKBACK.days} days.",
                labels=["market"],
            ),
            CounterMetricFamily(
                "overnight_deadline_missed",
                "Sessions of the current month (market time) whose open passed without a "
                "ready partition (late, failed, missing or still running); resets monthly.",
                labels=["market"],
            ),
            CounterMetricFamily(
                "overnight_runs",
                "Runs of the market finished this month (market time), by job-run status; "
                "resets monthly.",
                labels=["market", "status"],
            ),
            GaugeMetricFamily(
                "overnight_users_failed",
                "Users that failed in the market's newest finished run.",
                labels=["market"],
            ),
        )


def _utcnow() -> datetime:
    return datetime.now(UTC)


class AppMetrics:
    """One app's registry and what feeds it. `mode` is `settings.metrics`: `off` (nothing
    served, nothing measured per request), `same` (the `/metrics` route) or a port (a
    second HTTP server on it, started with the app's lifespan)."""

    def __init__(
        self,
        mode: str,
        markets: Mapping[str, Market],
        *,
        ttl: float = 5.0,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.mode = mode
        self.registry = CollectorRegistry()
        # Cache reads are counted in every mode: one increment, and the store needs no test.
        self.cache_reads = CacheReads(self.registry)
        self.requests = RequestMetrics(self.registry) if mode != "off" else None
        self.breaker = BreakerCollector()
        self.runs = RunCollector(markets, ttl=ttl, clock=clock or _utcnow)
        self.registry.register(self.breaker)
        self.registry.register(self.runs)
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self._server: tuple[WSGIServer, threading.Thread] | None = None

    @property
    def port(self) -> int | None:
        return int(self.mode) if self.mode.isdigit() else None

    def bind(self, services: Services, *, host: str) -> None:
        """Read the services the lifespan opened; on its own port, start serving."""
        self.breaker.breaker = services.dashboard.breaker
        self.runs.engine = services.db.engine
        if self.port is not None:
            self._server = start_http_server(self.port, addr=host, registry=self.registry)

    def unbind(self) -> None:
        if self._server is not None:
            server, thread = self._server
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
            self._server = None
        self.runs.engine = None
        self.breaker.breaker = None

    async def endpoint(self, request: Request) -> Response:
        """`GET /metrics` on the dashboard's port; the exposition (and the database read it
        may do) runs in a worker thread, never on the event loop."""
        encoder, content_type = choose_encoder(request.headers.get("accept", ""))
        body = await anyio.to_thread.run_sync(encoder, self.registry)
        return Response(body, headers={"Content-Type": content_type, "Cache-Control": "no-store"})
