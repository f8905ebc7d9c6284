"""The cache: each batch's entries written to Redis by the shard step as the batch commits
(`ShardCache`), and the cache step (`warm_cache`), which makes sure every user of the
calculation has its entry and writes those that are missing.

The shard step already holds both documents of every user as JSON bytes (it has just written
them to PostgreSQL): writing them to Redis from there, on the writer thread after the
batch's commit, spares reading every row back in a separate pass (issue 25's profile: the
cache step's re-read and re-encode ≈ 6 CPU-s of Python per 100,000 users, plus the
PostgreSQL reads, after the shards rather than beside them). Redis is not needed for the
night to go on: a shard that cannot reach it logs it once, stops trying, and leaves those
entries to the cache step, which fails visibly if Redis is still down (BEHAVIOUR §7).

Both writers go through the same Lua script (`storage.cache.write_entries`): "an older
market-date never replaces a newer entry" is decided atomically inside Redis whichever
writes first.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from operator import attrgetter

import redis
from sqlalchemy import Engine

from overnight_pipeline.core.audit import CALC_COMPLETED
from overnight_pipeline.core.chunks import chunks
from overnight_pipeline.steps.reports import CacheReport
from overnight_pipeline.storage.cache import DEFAULT_TTL_SECONDS, entries_missing, write_entries
from overnight_pipeline.storage.cache_entries import CacheEntry, entry_version
from overnight_pipeline.storage.events import users_with_event
from overnight_pipeline.storage.recommendations import row_versions
from overnight_pipeline.storage.results import recommendations_for

_log = logging.getLogger("overnight_pipeline.steps")


@dataclass
class ShardCache:
    """The shard step's Redis writes: thread-safe (the batch writers call it), best effort."""

    connect: Callable[[], redis.Redis]
    prefix: str = ""
    ttl_seconds: int = DEFAULT_TTL_SECONDS
    written: int = 0
    kept_newer: int = 0
    skipped: int = 0
    error: str | None = None
    _client: redis.Redis | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def write(self, entries: Sequence[CacheEntry]) -> None:
        """Write the entries of a committed batch; after a Redis error, count them skipped."""
        if not entries:
            return
        with self._lock:
            if self.error is None and self._client is None:
                self._client = self.connect()
            client = self._client if self.error is None else None
        if client is not None:
            try:
                outcome = write_entries(
                    client, entries, prefix=self.prefix, ttl_seconds=self.ttl_seconds
                )
            except redis.RedisError as exc:
                with self._lock:
                    if self.error is None:
                        self.error = f"{type(exc).__name__}: {exc}"
                        _log.warning(
                            "Redis failed during the shard step (%s): its entries are left "
                            "to the cache step",
                            self.error,
                        )
            else:
                with self._lock:
                    self.written += outcome.written
                    self.kept_newer += outcome.kept_newer
                return
        with self._lock:
            self.skipped += len(entries)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


# UUIDs' own order, by the integer each holds (a slot read in C): sorted() by UUID.__lt__
# made a Python call per comparison (≈ 120,000 of them for 10,000 users).
_BY_ID = attrgetter("int")


def warm_cache(
    engine: Engine,
    client: redis.Redis,
    *,
    day: date,
    correlation_id: uuid.UUID,
    prefix: str = "",
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    batch_size: int = 1000,
    only: Sequence[uuid.UUID] | None = None,
) -> CacheReport:
    """Make sure the run's persisted recommendations are in Redis: an entry the shards wrote
    (Redis holds exactly the row's version) is counted, any other is written now, pipelined,
    unless Redis holds a newer one (a later market date). Redis errors propagate: the step
    fails. `only`: those of the run's users (a recalculation's users of one market-date)."""
    started = time.perf_counter()
    if only is not None:
        users = sorted(set(only), key=_BY_ID)
    else:
        with engine.connect() as conn:
            users = sorted(
                users_with_event(conn, correlation_id=correlation_id, event_type=CALC_COMPLETED),
                key=_BY_ID,
            )
    found = written = kept = refilled = 0
    # Each batch of the run shares one generated_at: its version is made once.
    stamps: dict[datetime, str] = {}
    for chunk in chunks(users, batch_size):
        with engine.connect() as conn:
            versions = row_versions(conn, user_ids=chunk, day=day)
        ours = [
            (u, stamps.get(g) or stamps.setdefault(g, entry_version(day, g)))
            for u, g, c in versions
            if c == correlation_id
        ]
        missing = entries_missing(client, ours, prefix=prefix)
        found += len(ours) - len(missing)
        if missing:
            outcome = _refill(engine, client, missing, day, correlation_id, prefix, ttl_seconds)
            written += outcome[0]
            kept += outcome[1]
            refilled += len(missing)
    return CacheReport(
        users=len(users),
        written=found + written,
        kept_newer=kept,
        refilled=refilled,
        ttl_hours=ttl_seconds / 3600,
        seconds=time.perf_counter() - started,
    )


def _refill(
    engine: Engine,
    client: redis.Redis,
    users: Sequence[uuid.UUID],
    day: date,
    correlation_id: uuid.UUID,
    prefix: str,
    ttl_seconds: int,
) -> tuple[int, int]:
    """Write the entries of `users` from their persisted rows: (written, kept newer)."""
    with engine.connect() as conn:
        rows = recommendations_for(conn, user_ids=users, day=day, as_text=True)
    entries = [
        CacheEntry(
            user_id=row.user_id,
            market_date=row.market_date,
            generated_at=row.generated_at,
            recs_json=row.payload.encode(),
            portfolio_json=row.portfolio.encode(),
            total_investable=Decimal(row.total_investable),
        )
        for row in rows
        if row.correlation_id == correlation_id
    ]
    outcome = write_entries(client, entries, prefix=prefix, ttl_seconds=ttl_seconds)
    return outcome.written, outcome.kept_newer
