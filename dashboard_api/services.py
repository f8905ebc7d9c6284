"""What the app holds while it runs: built by the lifespan, closed when it ends.

PostgreSQL is reached two ways, chosen by measurement (docs/PERFORMANCE.md): the dashboard's
fallback read goes through a psycopg async pool (no thread hop, a prepared statement shared
by concurrent misses), and everything else (audit, job runs, SQLite) through the SQLAlchemy
engine in a bounded threadpool. Redis is one redis-py asyncio pool (hiredis
parser), with a short deadline per call and no retries, behind a circuit breaker: a slow or dead Redis must never
make a request fail or hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from sqlalchemy.engine import make_url

from dashboard_api.auth import TokenVerifier
from dashboard_api.dashboard import DashboardStore, redis_breaker
from dashboard_api.db import ThreadedDB
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


@dataclass
class Services:
    settings: Settings
    options: ApiOptions
    db: ThreadedDB
    pg_pool: AsyncConnectionPool[Any] | None
    redis: aioredis.Redis
    dashboard: DashboardStore
    tokens: TokenVerifier

    async def aclose(self) -> None:
        if self.dashboard.newest is not None:
            await self.dashboard.newest.aclose()
        if self.pg_pool is not None:
            await self.pg_pool.close()
        await self.redis.aclose()
        self.db.engine.dispose()


def pg_conninfo(database_url: str) -> str:
    """A libpq URI from the SQLAlchemy URL (`postgresql+psycopg://` → `postgresql://`)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


async def open_services(settings: Settings, options: ApiOptions) -> Services:
    engine = make_engine(
        settings.database_url,
        pool_size=options.db_pool_size,
        max_overflow=0,
        pool_timeout=options.db_timeout,
    )
    db = ThreadedDB(engine, limit=options.db_pool_size, timeout=options.db_timeout)
    pg_pool: AsyncConnectionPool[Any] | None = None
    if not settings.is_sqlite:
        timeout_ms = int(options.db_timeout * 1000)
        pg_pool = AsyncConnectionPool(
            pg_conninfo(settings.database_url),
            min_size=2,
            max_size=options.db_pool_size,
            timeout=options.db_timeout,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, int(options.db_timeout)),
                "options": f"-c statement_timeout={timeout_ms}",
            },
            name="dashboard",
            open=False,
        )
        # Do not wait: the app starts (and /readyz says why) even while PostgreSQL is down.
        await pg_pool.open(wait=False)
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
        pg_pool=pg_pool,
        db_timeout=options.db_timeout,
        redis_timeout=options.redis_timeout,
    )
    tokens = TokenVerifier(settings.dashboard_secret)
    return Services(settings, options, db, pg_pool, redis, store, tokens)
