"""`overnight_job_runs`: one row per pipeline run, kept true by the run sensors (BEHAVIOUR §4, §9).

No Dagster here: `defs/run_ledger.py` turns a run's events into these calls; the statuses and
the rule that decides a finished run's are `core.audit`'s. Writes are upserts
by run id (one writer of a run id at a time), so a sensor tick evaluated twice (or a started tick that arrives after the
finished one) leaves the same row. Functions take a `Connection` and never commit.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import Connection, and_, case, func, insert, select, text, tuple_, update

from overnight_pipeline.core.audit import (
    CALC_COMPLETED,
    CALC_STARTED,
    COMPLETED,
    FINISHED,
    STARTED,
)
from overnight_pipeline.core.markets import Market
from overnight_pipeline.core.readiness import Readiness, RunFact, current_or_next_session, judge
from overnight_pipeline.storage.models import calculation_events_table, overnight_job_runs_table
from overnight_pipeline.storage.partitions import ensure_months

JOB_TYPE = "overnight"
_CACHE_ASSET = "recommendation_cache"
"""The cache asset's entry in a row's `metrics.assets`: how rows written before
`metrics.cache_warmed` existed say whether the cache was written."""


@dataclass(frozen=True)
class CalculationCounts:
    """Users of one or more calculations (correlation ids), from the event store."""

    started: int = 0
    completed: int = 0
    failed: int = 0
    holdings_scored: int = 0  # one score per holding of each scored user
    recommendations: int = 0

    @property
    def unfinished(self) -> int:
        return max(self.started - self.completed - self.failed, 0)

    @property
    def failed_ratio(self) -> float:
        return self.failed / self.started if self.started else 0.0


def calculation_counts(conn: Connection, correlation_ids: Sequence[uuid.UUID]) -> CalculationCounts:
    """Users started, completed and failed under `correlation_ids`, the holdings scored
    (`CALC_STARTED.holdings` of users with scores) and the recommendations generated
    (`CALC_COMPLETED.recommendations`): the truth across retries and re-executions, which
    resume a calculation instead of repeating it, so one attempt's metadata undercounts."""
    if not correlation_ids:
        return CalculationCounts()
    e = calculation_events_table.c
    status = e.payload["status"].as_string()
    completed = and_(e.event_type == CALC_COMPLETED, status == "completed")
    row = conn.execute(
        select(
            func.count().filter(e.event_type == CALC_STARTED),
            func.count().filter(completed),
            func.count().filter(e.event_type == CALC_COMPLETED, status == "failed"),
            func.coalesce(
                func.sum(e.payload["holdings"].as_integer()).filter(e.event_type == CALC_STARTED),
                0,
            ),
            func.coalesce(func.sum(e.payload["recommendations"].as_integer()).filter(completed), 0),
        ).where(e.correlation_id.in_(list(correlation_ids)))
    ).one()
    return CalculationCounts(*(int(v or 0) for v in row))


def failed_users(
    conn: Connection, correlation_ids: Sequence[uuid.UUID], *, limit: int = 20
) -> list[dict[str, str]]:
    """A sample of the users that failed under `correlation_ids`: user, stage and error."""
    if not correlation_ids:
        return []
    e = calculation_events_table.c
    rows = conn.execute(
        select(e.user_id, e.payload)
        .where(
            e.correlation_id.in_(list(correlation_ids)),
            e.event_type == CALC_COMPLETED,
            e.payload["status"].as_string() == "failed",
        )
        .order_by(e.user_id)
        .limit(limit)
    )
    return [
        {
            "user": str(user_id),
            "stage": str(payload.get("stage", "-")),
            "error": str(payload.get("error", ""))[:500],
        }
        for user_id, payload in rows
    ]


@dataclass(frozen=True)
class JobRun:
    """What the sensors know about a run; `status` decides which columns are final."""

    run_id: str
    correlation_id: uuid.UUID
    started_at: datetime
    status: str = STARTED
    market: str | None = None
    market_date: date | None = None
    completed_at: datetime | None = None
    users_processed: int = 0
    users_failed: int = 0
    error_details: Mapping[str, Any] | None = None
    metrics: Mapping[str, Any] = field(default_factory=dict)
    job_type: str = JOB_TYPE

    def values(self) -> dict[str, Any]:
        return {
            "id": uuid.uuid5(uuid.NAMESPACE_URL, f"overnight-job-run:{self.run_id}"),
            "run_id": self.run_id,
            "job_type": self.job_type,
            "status": self.status,
            "started_at": self.started_at,
            "completed_at": self.completed_at,
            "users_processed": self.users_processed,
            "users_failed": self.users_failed,
            "correlation_id": self.correlation_id,
            "error_details": None if self.error_details is None else dict(self.error_details),
            "metrics": dict(self.metrics),
            "market": self.market,
            "market_date": self.market_date,
        }


def _claim(conn: Connection, run: JobRun) -> Any:
    """Make the month of `run` exist and hold the run id until commit: PostgreSQL cannot
    keep run ids unique in a table partitioned by `started_at`, so its writers take turns
    per run id (a transaction-level advisory lock); SQLite's unique index refuses a second
    row. Returns the run's current (status, started_at) row, or None."""
    ensure_months(conn, [run.started_at])
    if conn.dialect.name == "postgresql":
        conn.execute(
            text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
            {"key": f"overnight-job-run:{run.run_id}"},
        )
    j = overnight_job_runs_table
    return conn.execute(
        select(j.c.status, j.c.started_at).where(j.c.run_id == run.run_id).with_for_update()
    ).first()


def record_started(conn: Connection, run: JobRun) -> bool:
    """Insert the `started` row unless the run is already recorded (its finished row may
    have been written first: the sensors tick independently). True when inserted."""
    if _claim(conn, run) is not None:
        return False
    conn.execute(insert(overnight_job_runs_table).values(run.values()))
    return True


def record_finished(conn: Connection, run: JobRun) -> bool:
    """Upsert the finished row; True when the run was not recorded as finished before (the
    caller emits its trace span once). Writing the same outcome twice changes nothing."""
    if run.status not in FINISHED:
        raise ValueError(f"{run.status!r} is not a finished status ({', '.join(FINISHED)})")
    j = overnight_job_runs_table
    previous = _claim(conn, run)
    values = run.values()
    if previous is None:
        conn.execute(insert(j).values(values))
        return True
    del values["id"], values["run_id"]
    # The started row may carry an earlier start time (the run's own): keep the earliest
    # (a row whose month changes moves to that month's partition).
    values["started_at"] = min(previous.started_at, run.started_at)
    conn.execute(update(j).where(j.c.run_id == run.run_id).values(values))
    return previous.status not in FINISHED


def unfinished_run_ids(conn: Connection, *, limit: int) -> list[str]:
    """The run ids of the `limit` newest rows still `started`: the runs whose finished tick
    may have been lost."""
    j = overnight_job_runs_table.c
    return list(
        conn.scalars(
            select(j.run_id)
            .where(j.status == STARTED, j.run_id.is_not(None))
            .order_by(j.started_at.desc())
            .limit(limit)
        ).all()
    )


def job_run(conn: Connection, run_id: str) -> dict[str, Any] | None:
    """The row of `run_id` as a dict, or None."""
    j = overnight_job_runs_table
    row = conn.execute(select(j).where(j.c.run_id == run_id)).mappings().first()
    return None if row is None else dict(row)


def run_facts(
    conn: Connection, keys: Collection[tuple[str, date]]
) -> dict[tuple[str, date], list[RunFact]]:
    """The facts of every run of each (market, market date) in `keys`, oldest first, read
    in one statement: what `core.readiness.judge` needs.

    Whether a run wrote the cache is its metrics' `cache_warmed`; rows written before that
    entry existed count as written when `completed`, and when `partial` if the cache step
    materialised (their `assets` list it).
    """
    if not keys:
        return {}
    j = overnight_job_runs_table.c
    metrics = j.metrics
    warmed = case(
        (metrics["cache_warmed"].as_boolean().is_not(None), metrics["cache_warmed"].as_boolean()),
        (j.status == COMPLETED, True),
        else_=metrics[("assets", _CACHE_ASSET)].as_string().is_not(None),
    )
    rows = conn.execute(
        select(
            j.market,
            j.market_date,
            j.run_id,
            j.status,
            j.started_at,
            j.completed_at,
            j.users_processed,
            j.users_failed,
            warmed.label("cache_warmed"),
        )
        .where(
            j.job_type == JOB_TYPE,
            tuple_(j.market, j.market_date).in_([(m, d) for m, d in set(keys)]),
        )
        .order_by(j.started_at)
    )
    found: dict[tuple[str, date], list[RunFact]] = {key: [] for key in keys}
    for row in rows:
        found[(row.market, row.market_date)].append(
            RunFact(
                run_id=row.run_id or "",
                status=row.status,
                started_at=row.started_at,
                completed_at=row.completed_at,
                users_processed=row.users_processed,
                users_failed=row.users_failed,
                cache_written=bool(row.cache_warmed),
            )
        )
    return found


def market_readiness(
    conn: Connection, markets: Sequence[Market], *, now: datetime, day: date | None = None
) -> list[Readiness]:
    """Each market's readiness at `now` for its session on `day` (default: its current or
    next session), from one query."""
    sessions = {m.code: day or current_or_next_session(m, now) for m in markets}
    facts = run_facts(conn, [(m.code, sessions[m.code]) for m in markets])
    return [judge(m, sessions[m.code], facts[(m.code, sessions[m.code])], now) for m in markets]
