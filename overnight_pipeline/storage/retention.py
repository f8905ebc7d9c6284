"""Audit retention (SPEC §4, AC-8.6.5): calculation events, their asset index and job runs
older than two years are deleted in bounded batches, one short transaction each, so the
overnight writers are never blocked behind a long delete."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, delete, select, text, tuple_

from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    overnight_job_runs_table,
)

RETENTION_YEARS = 2
DEFAULT_BATCH = 5000

# (table, the timestamp that ages a row, the key a batch is chosen by)
_TARGETS: tuple[tuple[Table, str, tuple[str, ...]], ...] = (
    (calculation_events_table, "created_at", ("id",)),
    (calculation_assets_table, "created_at", ("asset_id", "correlation_id", "user_id")),
    (overnight_job_runs_table, "started_at", ("id",)),
)


def retention_cutoff(now: datetime, years: int = RETENTION_YEARS) -> datetime:
    """The same instant `years` calendar years before `now` (29 February → 28 February)."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        return now.replace(year=now.year - years)
    except ValueError:
        return now.replace(year=now.year - years, day=28)


def delete_expired_batch(conn: Connection, table: Table, *, cutoff: datetime, limit: int) -> int:
    """Delete at most `limit` rows of `table` aged before `cutoff`; returns how many. Rows
    another transaction holds are skipped (PostgreSQL), never waited for."""
    aged_by, key = next((a, k) for t, a, k in _TARGETS if t is table)
    keys: list[Column[Any]] = [table.c[name] for name in key]
    chosen = select(*keys).where(table.c[aged_by] < cutoff).limit(limit)
    if conn.dialect.name == "postgresql":
        # A blocked batch gives up quickly and the next run tries again.
        conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        chosen = chosen.with_for_update(skip_locked=True)
    target = keys[0] if len(keys) == 1 else tuple_(*keys)
    result = conn.execute(delete(table).where(target.in_(chosen)))
    return int(result.rowcount or 0)


@dataclass
class RetentionReport:
    cutoff: datetime
    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def delete_expired(
    engine: Engine,
    *,
    now: datetime | None = None,
    years: int = RETENTION_YEARS,
    batch_size: int = DEFAULT_BATCH,
) -> RetentionReport:
    """Delete every audit row older than `years` before `now`, `batch_size` rows per
    committed transaction."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    started = time.perf_counter()
    report = RetentionReport(cutoff=retention_cutoff(now or datetime.now(UTC), years))
    for table, _, _ in _TARGETS:
        report.deleted[table.name] = 0
        while True:
            with engine.begin() as conn:
                deleted = delete_expired_batch(conn, table, cutoff=report.cutoff, limit=batch_size)
            report.batches += 1
            report.deleted[table.name] += deleted
            if deleted < batch_size:
                break
    report.seconds = time.perf_counter() - started
    return report
