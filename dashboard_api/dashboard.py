"""`GET /api/dashboard` data: Redis first, PostgreSQL when the cache cannot answer (SPEC §6).

Hot path (`fastpath` calls it): one MGET of `recs:`, `portfolio:` and the version sidecar
(redis-py's asyncio pool, hiredis parser), then cheap checks on the cached document
(it parses, its schema version is known, its `userId` is the token's subject) instead of
field-by-field validation: only the pipeline's validated writer and the refill below put
documents there, and full validation would halve the throughput.

A miss, a Redis error or a document failing the checks falls back to the newest persisted
row (concurrent misses share one query, `newest`), which is then put back with what remains
of its 24 h. Redis errors open a short circuit breaker, so a dead or hanging Redis costs one
short timeout per cooldown, not one per request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
import redis.asyncio as aioredis
from psycopg_pool import AsyncConnectionPool
from redis.exceptions import RedisError

from dashboard_api.auth import Principal
from dashboard_api.db import DB_ERRORS, ThreadedDB, unavailable
from dashboard_api.newest import NewestRows
from dashboard_api.problems import Problem
from overnight_pipeline.core.money import quantum
from overnight_pipeline.core.payloads import SCHEMA_VERSION
from overnight_pipeline.storage import queries
from overnight_pipeline.storage.cache import CacheEntry, read_entry, refill_entry

log = logging.getLogger("dashboard_api")

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class DashboardResult:
    """What the dashboard shows; `recs` is the parsed `CachedRecommendations` document."""

    recs: dict[str, Any] | None
    portfolio_json: bytes | None
    total_investable: str
    base_currency: str
    generated_at: str | None
    from_cache: bool
    refill: CacheEntry | None = None

    def body(self) -> bytes:
        """The `GET /api/dashboard` response (`DashboardResponse`)."""
        return orjson.dumps(
            {
                "data": {
                    "recommendations": self.recs["recommendations"] if self.recs else [],
                    "totalInvestable": self.total_investable,
                    "baseCurrency": self.base_currency,
                    "dataFreshness": self.generated_at,
                    "fromCache": self.from_cache,
                }
            }
        )


class Breaker:
    """Skip Redis for `cooldown` seconds after `threshold` failures in a row; then let one
    request probe it.

    One failure is not enough: when this process is overloaded, its own event loop can make
    a healthy Redis miss a deadline now and then, and sending everyone to PostgreSQL for a
    second would only add load. A dead or silent Redis fails every call and trips it at once.
    """

    def __init__(
        self, cooldown: float, *, threshold: int = 3, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cooldown = cooldown
        self.threshold = threshold
        self.clock = clock
        self.failures = 0
        self._skip_until = 0.0

    @property
    def tripped(self) -> bool:
        return self.failures >= self.threshold

    def allow(self) -> bool:
        if not self.tripped:
            return True
        now = self.clock()
        if now < self._skip_until:
            return False
        self._skip_until = now + self.cooldown  # half-open: this request is the probe
        return True

    def success(self) -> None:
        self.failures = 0

    def failure(self, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == self.threshold:
            log.warning("Redis unavailable (%s); serving from PostgreSQL", type(exc).__name__)
        if self.tripped:
            self._skip_until = self.clock() + self.cooldown


def usable(doc: Any, user_key: str) -> bool:
    """The cheap checks: a document of a known schema version, for this user."""
    return (
        type(doc) is dict
        and doc.get("schemaVersion") == SCHEMA_VERSION
        and doc.get("userId") == user_key
        and type(doc.get("recommendations")) is list
        and type(doc.get("generatedAt")) is str
    )


def money(value: str | Decimal, currency: str) -> str:
    """A Decimal string at the currency's minor unit (the column keeps 4 places)."""
    amount = value if isinstance(value, Decimal) else Decimal(value)
    try:
        return format(amount.quantize(quantum(currency)), "f")
    except (InvalidOperation, ValueError):
        return format(amount, "f")


class DashboardStore:
    def __init__(
        self,
        *,
        redis: aioredis.Redis,
        prefix: str,
        breaker: Breaker,
        db: ThreadedDB,
        pg_pool: AsyncConnectionPool[Any] | None,
        db_timeout: float,
        redis_timeout: float,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.breaker = breaker
        self.db = db
        self.pg_pool = pg_pool
        self.newest = NewestRows(pg_pool, timeout=db_timeout) if pg_pool is not None else None
        self.db_timeout = db_timeout
        self.redis_timeout = redis_timeout

    async def load(self, principal: Principal) -> DashboardResult:
        cached = await self.from_cache(principal)
        if cached is not None:
            return cached
        return await self.from_database(principal)

    async def from_cache(self, principal: Principal) -> DashboardResult | None:
        if not self.breaker.allow():
            return None
        try:
            async with asyncio.timeout(self.redis_timeout):
                entry = await read_entry(self.redis, principal.user_key, prefix=self.prefix)
        except REDIS_ERRORS as exc:
            self.breaker.failure(exc)
            return None
        self.breaker.success()
        if entry is None or entry.total_investable is None:
            return None
        try:
            doc = orjson.loads(entry.recs_json)
            if not usable(doc, principal.user_key):
                raise ValueError("failed the cheap checks")
            base = doc["portfolioSummary"]["baseCurrency"]
            total = money(entry.total_investable, base)
        except (ValueError, KeyError, TypeError, InvalidOperation) as exc:
            log.warning(
                "cache entry of user %s unusable (%s); falling back", principal.user_key, exc
            )
            return None
        return DashboardResult(
            recs=doc,
            portfolio_json=entry.portfolio_json,
            total_investable=total,
            base_currency=base,
            generated_at=doc["generatedAt"],
            from_cache=True,
        )

    async def from_database(self, principal: Principal) -> DashboardResult:
        uid = principal.user_id
        if self.newest is not None:
            try:
                row = await self.newest.get(uid)
            except DB_ERRORS as exc:
                log.error("PostgreSQL unavailable for the dashboard: %s", type(exc).__name__)
                raise unavailable() from None
        else:
            row = await self.db.run(lambda conn: queries.newest_recommendation(conn, user_id=uid))
        if row is None:
            return await self._new_user(principal)
        doc = orjson.loads(row.payload_json)
        if not usable(doc, principal.user_key):
            version = doc.get("schemaVersion") if type(doc) is dict else None
            log.error("stored recommendations of %s are unreadable (schema version %r; this "
                      "server reads %d)", principal.user_key, version, SCHEMA_VERSION)  # fmt: skip
            raise Problem(503, "stored recommendations are in a format this server cannot read")
        return DashboardResult(
            recs=doc,
            portfolio_json=row.portfolio_json.encode(),
            total_investable=money(row.total_investable, row.base_currency),
            base_currency=row.base_currency,
            generated_at=doc["generatedAt"],
            from_cache=False,
            refill=CacheEntry(
                user_id=row.user_id,
                market_date=row.market_date,
                generated_at=row.generated_at,
                recs_json=row.payload_json.encode(),
                portfolio_json=row.portfolio_json.encode(),
                total_investable=row.total_investable,
            ),
        )

    async def _new_user(self, principal: Principal) -> DashboardResult:
        """No recommendations yet: an empty list, with the user's currency and contribution."""
        uid = principal.user_id
        profile = await self.db.run(lambda conn: queries.user_profile(conn, user_id=uid))
        base = profile.base_currency if profile else ""
        contribution = (profile.default_contribution if profile else None) or Decimal(0)
        return DashboardResult(
            recs=None,
            portfolio_json=None,
            total_investable=money(contribution, base) if base else format(contribution, "f"),
            base_currency=base,
            generated_at=None,
            from_cache=False,
        )

    async def refill(self, entry: CacheEntry) -> None:
        """Put a PostgreSQL result back in Redis (never over a newer entry); errors only log."""
        if not self.breaker.allow():
            return
        try:
            async with asyncio.timeout(self.redis_timeout):
                await refill_entry(self.redis, entry, prefix=self.prefix)
        except REDIS_ERRORS as exc:
            self.breaker.failure(exc)
        else:
            self.breaker.success()
