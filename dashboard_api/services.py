"""What the app holds while it runs: built by the lifespan, closed when it ends.

The app database is one SQLAlchemy engine used from a bounded threadpool (`ThreadedDB`);
the dashboard's cache misses share batched queries on it (`newest`), so the thread hop is
paid per batch, not per miss (docs/PERFORMANCE.md). On PostgreSQL each connection carries a
statement timeout. Redis is one redis-py asyncio pool (hiredis parser), with a short
deadline per call and no retries, behind a circuit breaker: a slow or dead Redis must never
make a request fail or hang.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from dashboard_api.auth import TokenVerifier
from dashboard_api.dashboard import DashboardStore, redis_breaker
from dashboard_api.db import ThreadedDB
from dashboard_api.metrics import CacheReads
from overnight_pipeline.settings import Settings
from overnight_pipeline.storage.db import make_engine


@dataclass(frozen=True)
class ApiOptions:
    """Knobs of the API process (not operator settings: defaults suit production)."""

    # A refused or unreachable Redis is known within the connect timeout. The per-call
    # deadline is longer: an overloaded process can stall its own event loop for hundreds
    # of milliseconds, and blaming a healthy Redis for that sends everyone to PostgreSQL.
    redis_connect_timeout: float = 0.25
    redis_timeout: float = 1.0  # per call (send and reply), seconds
    redis_cooldown: float = 1.0  # skip Redis this long after `redis_failures` errors in a row
    redis_failures: int = 3
    db_timeout: float = 2.0  # pool checkout and statement, seconds
    db_pool_size: int = 8
    metrics_ttl: float = 5.0  # seconds the run-derived metrics are reused between scrapes
    metrics_clock: Callable[[], datetime] | None = None  # tests: a fixed "now" for them


@dataclass
class Services:
    settings: Settings
    options: ApiOptions
    db: ThreadedDB
    redis: aioredis.Redis
    dashboard: DashboardStore
    tokens: TokenVerifier

    async def aclose(self) -> None:
        await self.dashboard.newest.aclose()
        await self.redis.aclose()
        self.db.engine.dispose()


async def open_services(
    settings: Settings, options: ApiOptions, *, cache_reads: CacheReads
) -> Services:
    connect_args: dict[str, Any] = {}
    if not settings.is_sqlite:
        connect_args = {
            "connect_timeout": max(1, int(options.db_timeout)),
            "options": f"-c statement_timeout={int(options.db_timeout * 1000)}",
        }
    engine = make_engine(
        settings.database_url,
        pool_size=options.db_pool_size,
        max_overflow=0,
        pool_timeout=options.db_timeout,
        connect_args=connect_args,
    )
    db = ThreadedDB(engine, limit=options.db_pool_size, timeout=options.db_timeout)
    # The per-call deadline is an `asyncio.timeout` around each call (dashboard.py):
    # redis-py's socket_timeout wraps every send in `wait_for`, a task per command on 3.11.
    # Cancellation mid-command makes redis-py drop that connection, so none is reused dirty.
    redis = aioredis.Redis.from_url(
        settings.redis_url,
        socket_timeout=None,
        socket_connect_timeout=options.redis_connect_timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
    store = DashboardStore(
        redis=redis,
        prefix=settings.cache_prefix,
        breaker=redis_breaker(options.redis_cooldown, threshold=options.redis_failures),
        db=db,
        redis_timeout=options.redis_timeout,
        reads=cache_reads,
    )
    tokens = TokenVerifier(settings.dashboard_secret)
    return Services(settings, options, db, redis, store, tokens)
