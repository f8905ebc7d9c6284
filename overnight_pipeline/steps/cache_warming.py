"""The cache step: a calculation's persisted recommendations written to Redis."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from datetime import date
from decimal import Decimal

import redis
from sqlalchemy import Engine

from overnight_pipeline.core.audit import CALC_COMPLETED
from overnight_pipeline.core.chunks import chunks
from overnight_pipeline.steps.reports import CacheReport
from overnight_pipeline.storage.cache import write_entries
from overnight_pipeline.storage.cache_entries import CacheEntry
from overnight_pipeline.storage.events import users_with_event
from overnight_pipeline.storage.results import recommendations_for


def warm_cache(
    engine: Engine,
    client: redis.Redis,
    *,
    day: date,
    correlation_id: uuid.UUID,
    prefix: str = "",
    ttl_seconds: int = 86_400,
    batch_size: int = 1000,
    only: Sequence[uuid.UUID] | None = None,
) -> CacheReport:
    """Write the run's persisted recommendations to Redis, pipelined; an entry newer than
    the run's (a later market date) is kept. Redis errors propagate: the step fails.
    `only`: those of the run's users (a recalculation's users of one market-date)."""
    started = time.perf_counter()
    if only is not None:
        users = sorted(set(only))
    else:
        with engine.connect() as conn:
            users = sorted(
                users_with_event(conn, correlation_id=correlation_id, event_type=CALC_COMPLETED)
            )
    written = kept = 0
    for chunk in chunks(users, batch_size):
        with engine.connect() as conn:
            rows = recommendations_for(conn, user_ids=chunk, day=day, as_text=True)
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
        written += outcome.written
        kept += outcome.kept_newer
    return CacheReport(
        users=len(users),
        written=written,
        kept_newer=kept,
        ttl_hours=ttl_seconds / 3600,
        seconds=time.perf_counter() - started,
    )
