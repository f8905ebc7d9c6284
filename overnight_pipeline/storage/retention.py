"""Audit retention (BEHAVIOUR §4): calculation events, their asset index, the
snapshots they reference and job runs older than two years go.

On PostgreSQL the four tables are partitioned by month (`storage.partitions`): a month
whose end is more than two years ago is detached and dropped, a catalog operation whatever
its row count, and the coming months are created ahead. On SQLite (the demo) rows are
deleted in bounded batches, one short transaction each, so the overnight writers are never
blocked behind a long delete."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from sqlalchemy import Column, Connection, Engine, Table, delete, select, text, tuple_

from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    calculation_snapshots_table,
    overnight_job_runs_table,
)
from overnight_pipeline.storage.partitions import (
    MONTHS_AHEAD,
    drop_months_before,
    ensure_months,
    month_of,
    next_month,
)

RETENTION_YEARS = 2
DEFAULT_BATCH = 5000

# (table, the time that ages a row (its partition key), the key a batch is chosen by)
_TARGETS: tuple[tuple[Table, str, tuple[str, ...]], ...] = (
    (calculation_events_table, "calculated_at", ("id",)),
    # A calculation's rows of one asset and bucket age together: a batch deletes them all.
    (calculation_assets_table, "calculated_at", ("asset_id", "correlation_id", "bucket")),
    (calculation_snapshots_table, "month", ("hash", "month")),
    (overnight_job_runs_table, "started_at", ("id", "started_at")),
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
    # A snapshot's month is kept while any of it is within the cutoff, like a partition.
    bound: Any = cutoff if aged_by != "month" else _whole_months_before(cutoff)
    older = table.c[aged_by] < bound
    chosen = select(*keys).where(older).limit(limit)
    if conn.dialect.name == "postgresql":
        # A blocked batch gives up quickly and the next run tries again.
        conn.execute(text("SET LOCAL lock_timeout = '5s'"))
        chosen = chosen.with_for_update(skip_locked=True)
    target = keys[0] if len(keys) == 1 else tuple_(*keys)
    result = conn.execute(delete(table).where(target.in_(chosen)))
    return int(result.rowcount or 0)


def _whole_months_before(cutoff: datetime) -> date:
    """The first month not wholly before `cutoff`: the months before it can go."""
    return month_of(cutoff)


@dataclass
class RetentionReport:
    cutoff: datetime
    deleted: dict[str, int] = field(default_factory=dict)  # rows (PostgreSQL: estimated)
    batches: int = 0
    seconds: float = 0.0
    dropped: list[str] = field(default_factory=list)  # partitions (PostgreSQL)
    created: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.deleted.values())


def delete_expired(
    engine: Engine,
    *,
    now: datetime | None = None,
    years: int = RETENTION_YEARS,
    batch_size: int = DEFAULT_BATCH,
    lock_timeout: str = "5s",
) -> RetentionReport:
    """Remove every audit row older than `years` before `now`: on PostgreSQL by dropping
    the months wholly before the cutoff (and creating the next `MONTHS_AHEAD` months), on
    SQLite by deleting `batch_size` rows per committed transaction."""
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    started = time.perf_counter()
    now = now or datetime.now(UTC)
    report = RetentionReport(cutoff=retention_cutoff(now, years))
    if engine.dialect.name == "postgresql":
        months = [month_of(now)]
        for _ in range(MONTHS_AHEAD):
            months.append(next_month(months[-1]))
        with engine.begin() as conn:
            report.created = ensure_months(conn, months)
        with engine.begin() as conn:
            dropped = drop_months_before(conn, report.cutoff, lock_timeout=lock_timeout)
        report.deleted = {table.name: 0 for table, _, _ in _TARGETS}
        for month in dropped:
            report.deleted[month.table] += month.rows
        report.dropped = [f"{d.table}_p{d.month:%Y_%m}" for d in dropped]
        report.batches = 1
        report.seconds = time.perf_counter() - started
        return report
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
