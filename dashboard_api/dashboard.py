"""`GET /api/dashboard` data: Redis first, PostgreSQL when the cache cannot answer (BEHAVIOUR §6).

Hot path (`api.DashboardEndpoint` calls it): one MGET of `recs:`, `portfolio:` and the version sidecar
(redis-py's asyncio pool, hiredis parser), then the whole entry checked against the contract
(`storage.cache_validation.validate_entry`: both documents field by field inside pydantic-core, owned by
the token's subject, the sidecar a plausible version of this very document); bytes this
process already validated in full are looked up in its memo (`ValidatedEntries`, by the
exact bytes) and checked again only for what depends on the request and the clock: the owner
and the version's date (docs/PERFORMANCE.md, "Validated entries remembered"). Redis is not
trusted: anyone who can write to it must not be able to make this server fail or show one
user another's data.

The same MGET reads the user's change marker (`changed:`, `storage.freshness`): when their
inputs changed after the served `generatedAt`, the answer says when (`inputsChangedAt`); the
fallback reads it from `user_changes` in the batch that reads the row, and puts the marker
back with the refill. A marker that is not one this project writes is ignored.

A miss, a Redis error or an entry failing the checks falls back to the newest persisted
row (concurrent misses share one query, `newest`), which is then put back with what remains
of its 24 h; a rejected entry is logged and overwritten whatever its version key says. Every
read is counted by its result (`dashboard_cache_reads_total`: hit, miss, rejected,
redis_error; `metrics.CacheReads`). Redis errors open a short circuit breaker (pybreaker's, as
the HTTP providers'), so a dead or hanging Redis costs one short timeout per cooldown, not
one per request.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation

import orjson
import pybreaker
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dashboard_api.auth import Principal
from dashboard_api.db import ThreadedDB
from dashboard_api.metrics import CacheReads
from dashboard_api.newest import NewestRows
from dashboard_api.problems import Problem
from overnight_pipeline.core.money import quantum
from overnight_pipeline.core.payloads import (
    SCHEMA_VERSION,
    InvalidDocument,
    WirePortfolio,
    WireRecommendations,
    check_documents,
    check_objects,
    parse_time,
    upgrade_legacy,
)
from overnight_pipeline.providers.resilience import circuit_breaker, quiet, record_failure
from overnight_pipeline.storage import queries
from overnight_pipeline.storage.cache import evict_entry, read_entry_and_change, refill_entry
from overnight_pipeline.storage.cache_entries import CachedEntry, CacheEntry
from overnight_pipeline.storage.cache_validation import ValidatedEntries, validate_entry
from overnight_pipeline.storage.freshness import (
    changed_after,
    marker_stamp,
    restore_marker,
    stamp,
)

log = logging.getLogger("dashboard_api")

REDIS_ERRORS = (RedisError, OSError, asyncio.TimeoutError)


@dataclass(frozen=True)
class Repair:
    """What to put right in Redis once the answer has gone out: `entry` (from PostgreSQL) to
    refill, `replacing`, the digest of the entry the reader rejected, and `changed_at`, the
    change marker to put back (the inputs changed after `entry` was generated)."""

    user_key: str
    entry: CacheEntry | None
    replacing: str | None = None
    changed_at: datetime | None = None


@dataclass(frozen=True)
class DashboardResult:
    """What the dashboard shows: both documents as validated against the contract."""

    recs: WireRecommendations | None
    portfolio: WirePortfolio | None
    total_investable: str
    base_currency: str
    generated_at: str | None
    from_cache: bool
    repair: Repair | None = None
    # When the user's inputs changed after `generated_at` (or, with nothing served, at all).
    inputs_changed_at: str | None = None

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
                    "inputsChangedAt": self.inputs_changed_at,
                }
            }
        )


def redis_breaker(cooldown: float, *, threshold: int = 3) -> pybreaker.CircuitBreaker:
    """Skip Redis for `cooldown` seconds after `threshold` Redis errors in a row; then let
    one request probe it (`providers.resilience.circuit_breaker`, pybreaker's).

    One failure is not enough: when this process is overloaded, its own event loop can make
    a healthy Redis miss a deadline now and then, and sending everyone to PostgreSQL for a
    second would only add load. A dead or silent Redis fails every call and trips it at once.
    """
    return circuit_breaker(
        "redis",
        threshold=threshold,
        cooldown=cooldown,
        counts=lambda exc: isinstance(exc, REDIS_ERRORS),
        listeners=[_LogTrip()],
    )


class _LogTrip(pybreaker.CircuitBreakerListener):
    """One warning when the breaker opens, naming the error that opened it."""

    def __init__(self) -> None:
        self.last = "error"

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.last = type(exc).__name__

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if new_state.name == pybreaker.STATE_OPEN and (
            old_state is None or old_state.name == pybreaker.STATE_CLOSED
        ):
            log.warning("Redis unavailable (%s); serving from PostgreSQL", self.last)


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
        breaker: pybreaker.CircuitBreaker,
        db: ThreadedDB,
        redis_timeout: float,
        reads: CacheReads,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.breaker = breaker
        self.db = db
        self.newest = NewestRows(db)
        self.redis_timeout = redis_timeout
        self.reads = reads
        # Entries this process validated in full, by their exact bytes (storage.cache_validation).
        self.validated = ValidatedEntries()

    async def load(self, principal: Principal) -> DashboardResult:
        cached, rejected = await self.from_cache(principal)
        if cached is not None:
            return cached
        return await self.from_database(principal, replacing=rejected)

    async def from_cache(self, principal: Principal) -> tuple[DashboardResult | None, str | None]:
        """The cached answer, or (None, digest of the entry rejected, if one was)."""
        # The hot path: while Redis is healthy, pybreaker is only told of a failure.
        healthy = quiet(self.breaker)
        try:
            if healthy:
                entry, marker = await self._read(principal)
            else:
                with self.breaker.calling():
                    entry, marker = await self._read(principal)
        except pybreaker.CircuitBreakerError:
            self.reads.redis_error.inc()
            return None, None
        except REDIS_ERRORS as exc:
            self.reads.redis_error.inc()
            if healthy:
                record_failure(self.breaker, exc)
            return None, None
        if entry is None:
            self.reads.miss.inc()
            return None, None
        now = datetime.now(UTC)
        try:
            valid = validate_entry(entry, principal.user_key, now=now, memo=self.validated)
        except InvalidDocument as exc:
            self.reads.rejected.inc()
            self.reject(principal.user_key, exc.reason)
            return None, entry.digest
        self.reads.hit.inc()
        base = valid.recs["portfolioSummary"]["baseCurrency"]
        result = DashboardResult(
            recs=valid.recs,
            portfolio=valid.portfolio,
            total_investable=money(valid.total_investable, base),
            base_currency=base,
            generated_at=valid.recs["generatedAt"],
            from_cache=True,
            # The version is this very `generatedAt` as a stamp (`validate_entry` checked it).
            inputs_changed_at=None
            if marker is None
            else changed_after(marker_stamp(marker, now=now), entry.version[11:]),
        )
        return result, None

    async def _read(self, principal: Principal) -> tuple[CachedEntry | None, object]:
        async with asyncio.timeout(self.redis_timeout):
            return await read_entry_and_change(self.redis, principal.user_key, prefix=self.prefix)

    def reject(self, user_key: str, reason: str) -> None:
        """Log a cache entry that failed the contract (it is then served from PostgreSQL)."""
        log.warning(
            "cache entry rejected: user=%s reason=%r; serving from PostgreSQL", user_key, reason
        )

    async def from_database(
        self, principal: Principal, *, replacing: str | None = None
    ) -> DashboardResult:
        newest = await self.newest.read(principal.user_id)
        row = newest.row
        change = None if newest.changed_at is None else stamp(newest.changed_at)
        if row is None:
            return await self._new_user(principal, replacing, changed_after(change, None))
        try:
            recs, portfolio, recs_json, portfolio_json = _checked_row(row, principal.user_key)
        except (InvalidDocument, orjson.JSONDecodeError) as exc:
            log.error(
                "stored recommendations of %s are unreadable (%s; this server reads "
                "schema version %d)",
                principal.user_key,
                exc,
                SCHEMA_VERSION,
            )
            raise Problem(
                503, "stored recommendations are in a format this server cannot read"
            ) from None
        refill = CacheEntry(
            user_id=row.user_id,
            market_date=row.market_date,
            generated_at=row.generated_at,
            recs_json=recs_json,
            portfolio_json=portfolio_json,
            total_investable=row.total_investable,
        )
        # Against the `generatedAt` served (`dataFreshness`), as a cache hit compares.
        changed = changed_after(change, stamp(parse_time(recs["generatedAt"])))
        return DashboardResult(
            recs=recs,
            portfolio=portfolio,
            total_investable=money(row.total_investable, row.base_currency),
            base_currency=row.base_currency,
            generated_at=recs["generatedAt"],
            from_cache=False,
            repair=Repair(
                principal.user_key,
                refill,
                replacing,
                changed_at=newest.changed_at if changed is not None else None,
            ),
            inputs_changed_at=changed,
        )

    async def _new_user(
        self, principal: Principal, replacing: str | None, changed: str | None
    ) -> DashboardResult:
        """No recommendations yet: an empty list, with the user's currency and contribution."""
        uid = principal.user_id
        profile = await self.db.run(lambda conn: queries.user_profile(conn, user_id=uid))
        base = profile.base_currency if profile else ""
        contribution = (profile.default_contribution if profile else None) or Decimal(0)
        return DashboardResult(
            recs=None,
            portfolio=None,
            total_investable=money(contribution, base) if base else format(contribution, "f"),
            base_currency=base,
            generated_at=None,
            from_cache=False,
            # Nothing to cache, but an entry that was rejected goes.
            repair=Repair(principal.user_key, None, replacing) if replacing else None,
            inputs_changed_at=changed,
        )

    async def refill(self, repair: Repair) -> None:
        """Put a PostgreSQL result back in Redis (never over a newer valid entry, always over
        the rejected one); errors only count against the breaker."""
        try:
            with self.breaker.calling():
                async with asyncio.timeout(self.redis_timeout):
                    if repair.changed_at is not None:
                        # First: a hit on the refilled entry must find its marker.
                        await restore_marker(
                            self.redis, repair.user_key, repair.changed_at, prefix=self.prefix
                        )
                    if repair.entry is not None:
                        await refill_entry(
                            self.redis, repair.entry, prefix=self.prefix, replacing=repair.replacing
                        )
                    elif repair.replacing is not None:
                        await evict_entry(
                            self.redis, repair.user_key, repair.replacing, prefix=self.prefix
                        )
        except (*REDIS_ERRORS, pybreaker.CircuitBreakerError):
            pass


def _checked_row(
    row: queries.PersistedRecommendation, user_key: str
) -> tuple[WireRecommendations, WirePortfolio, bytes, bytes]:
    """A persisted row's documents, validated as a cached entry is, and as the refill writes
    them; rows of schema version 1 are upgraded (their portfolio document had no owner)."""
    try:
        recs, portfolio = check_documents(row.payload_json, row.portfolio_json, user_key)
    except InvalidDocument as first:
        old_recs, old_portfolio = orjson.loads(row.payload_json), orjson.loads(row.portfolio_json)
        new_recs, new_portfolio = upgrade_legacy(old_recs, old_portfolio, row.user_id)
        if new_recs is old_recs:
            raise first from None
        recs, portfolio = check_objects(new_recs, new_portfolio, user_key)
        return recs, portfolio, orjson.dumps(new_recs), orjson.dumps(new_portfolio)
    return recs, portfolio, row.payload_json.encode(), row.portfolio_json.encode()
