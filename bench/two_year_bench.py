"""Benchmark: two years of audit for 1,000 users (issue 15 item 5; BEHAVIOUR §4, §8).

    .venv/bin/python bench/two_year_bench.py [--users 1000] [--months 24] [--real 6]
                                             [--samples 200] [--now 2026-12-01] [--keep]

A throwaway PostgreSQL database is seeded (in a child process) with users who all hold NYSE
assets; then every NYSE session of the `--months` before `--now` (500 for two years) gets
its night, oldest first, each calculated at 23:00 UTC of its market date so that its rows
land in the month they would have. `--real` of them (the first, the last, the one 23 months
back that is replayed, the rest evenly spread) go through the real write path
(`steps.fetch_*` with the synthetic provider, then `score_and_recommend`, and the job
run's row by `job_runs.record_finished`). Every other night is a server-side copy of the
latest real night before it (`INSERT … SELECT` from its rows, staged once per real night):
the same payloads (stored as the real path stores them), a calculation's asset-X rows
sharing its `calculated_at` (so the indexes deduplicate as the real path's do), a new
correlation id (md5 of the date), timestamps shifted to its night, its recommendation rows
and the day's market data under its date, its own market snapshot (a distinct hash, the same
payload: one per night, as prices change daily), the month's criteria and inputs snapshots
once per month (users whose rules and holdings do not change within the month) and one
`overnight_job_runs` row. A copied night's `INPUTS_CAPTURED` still names its
real night's market snapshot: only real nights are replayed. The database is then vacuumed
and analyzed (`VACUUM (ANALYZE)`), as autovacuum would have done month after month (it is
off on this machine's server): hint bits and visibility maps set, planner statistics and the
row estimates that retention reports.

Measured:
1. the size of every table (`pg_total_relation_size`: heap, TOAST and indexes, a partitioned
   table's being the sum of its months) and the growth per user-night since the seed;
2. "all calculations for asset X" (`storage.queries.calculations_for_asset`), operator
   (asset only) and user (asset + user), newest first: the first page (50 rows) and a deep
   page (50 rows after the cursor of a real row 18 months back), each over `--samples` random
   assets or (user, asset) pairs of the last night, timed on a second pass (warm cache) from
   this process (SQLAlchemy included); every page checked (its asset and user, newest first,
   after its cursor), one user's asset walked page by page to its end; EXPLAIN ANALYZE of
   one query, and of one of each kind in a line (which scans ran on which months);
3. `replay_sample` of the calculation 23 months back, every user of it;
4. `storage.retention.delete_expired` with `now` one second past two years after the end of
   the first month: exactly that month's partitions go; its rows are gone and the next
   month's are all there (counted before and after).

Prints each phase's seconds with the load average, the figures and MET/MISSED: first page
p99 < 20 ms, retention < 1 s, replay exact, growth ≤ 8 KB per user-night (informational:
the official growth figure is `bench/storage_bench.py`'s, of a real 10,000-user night).
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import random
import re
import resource
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as clock
from pathlib import Path
from typing import Any

# The code of this checkout, not the one a shared virtualenv's editable install points at.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import Connection, Engine, Table, text

from overnight_pipeline.core import audit
from overnight_pipeline.core.captured_reader import snapshot_keys
from overnight_pipeline.core.markets import DEFAULT_MARKETS, is_session
from overnight_pipeline.providers.synthetic import SyntheticProvider
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.steps.market_data import fetch_fundamentals, fetch_prices, fetch_rates
from overnight_pipeline.steps.replay import ReplayOutcome, replay_sample
from overnight_pipeline.steps.reports import StepReport
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import (
    asset_fundamentals_table,
    asset_prices_table,
    calculation_assets_table,
    calculation_events_table,
    calculation_snapshots_table,
    exchange_rates_table,
    overnight_job_runs_table,
    recommendations_table,
)
from overnight_pipeline.storage.partitions import (
    PARTITIONED,
    ensure_months,
    existing,
    month_of,
    next_month,
)
from overnight_pipeline.storage.queries import (
    AssetCalculation,
    CalculationCursor,
    calculations_for_asset,
    calculations_statement,
)
from overnight_pipeline.storage.retention import RETENTION_YEARS, delete_expired
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[1]
NYSE = next(m for m in DEFAULT_MARKETS if m.code == "NYSE")
MARKETS = {NYSE.code: NYSE}
NOW = datetime(2026, 12, 1, tzinfo=UTC)
NIGHT_AT = clock(23, 0, tzinfo=UTC)
REPLAY_MONTHS_BACK, DEEP_MONTHS_BACK = 23, 18
PAGE = 50
P99_TARGET_MS, RETENTION_TARGET_S, GROWTH_TARGET_KB = 20.0, 1.0, 8.0  # growth: issue 25 (was 10)
LAST_UUID = uuid.UUID(int=2**128 - 1)

SEED = """
import sys
from datetime import date
from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.seed import seed
from overnight_pipeline.storage.db import make_engine
engine = make_engine(sys.argv[1])
with engine.begin() as conn:
    seed(conn, users=int(sys.argv[2]), seed=5, as_of=date.fromisoformat(sys.argv[3]),
         markets=tuple(m for m in DEFAULT_MARKETS if m.code == "NYSE"))
"""


def load() -> str:
    """The load averages (1, 5, 15 min): the machine is shared."""
    return "load {:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


# Nights -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Night:
    day: date
    at: datetime  # calculated_at: 23:00 UTC of the market date
    correlation_id: uuid.UUID
    real: bool

    @property
    def run_id(self) -> str:
        return f"two-year-bench:{self.day.isoformat()}"


def months_back(moment: datetime, months: int) -> datetime:
    """The same day and time `months` calendar months earlier (the day clipped to 28)."""
    index = moment.year * 12 + moment.month - 1 - months
    return moment.replace(year=index // 12, month=index % 12 + 1, day=min(moment.day, 28))


def night_of(day: date, *, real: bool) -> Night:
    digest = hashlib.md5(f"two-year-bench:{day.isoformat()}".encode()).hexdigest()
    return Night(day, datetime.combine(day, NIGHT_AT), uuid.UUID(digest), real)


def plan_nights(
    now: datetime, *, months: int = 24, real: int = 6, replay_months: int = REPLAY_MONTHS_BACK
) -> list[Night]:
    """A night for every NYSE session of the `months` before `now`, oldest first; real ones:
    the first, the last, the first on or after `replay_months` back, the rest evenly spread."""
    start, day, days = months_back(now, months).date(), months_back(now, months).date(), []
    while day < now.date():
        if is_session(NYSE, day):
            days.append(day)
        day += timedelta(days=1)
    if len(days) < 2:
        raise ValueError(f"{months} months before {now:%Y-%m-%d} hold {len(days)} sessions")
    replay_from = max(months_back(now, replay_months).date(), start)
    chosen = {days[0], days[-1], next(d for d in days if d >= replay_from)}
    spread = max(real - len(chosen), 0)
    chosen.update(days[round(i * (len(days) - 1) / (spread + 1))] for i in range(1, spread + 1))
    return [night_of(d, real=d in chosen) for d in days]


def night_near(nights: Sequence[Night], moment: datetime, *, real: bool = False) -> Night:
    """The first night (a real one with `real`) at or after `moment`."""
    return next(n for n in nights if n.at >= moment and (n.real or not real))


# Writing ----------------------------------------------------------------------------------


def seed_users(url: str, users: int, as_of: date) -> None:
    """Seed in a child process (its memory is not this one's), then ANALYZE."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    subprocess.run(
        [sys.executable, "-c", SEED, url, str(users), as_of.isoformat()],
        check=True,
        env={**os.environ, "PYTHONPATH": path},
    )
    maintain(url, "ANALYZE")


def maintain(url: str, command: str = "VACUUM (ANALYZE)") -> None:
    """What autovacuum would have done by now (a database-wide command, outside a
    transaction)."""
    engine = make_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(command)
    engine.dispose()


def write_real_night(engine: Engine, night: Night) -> StepReport:
    """One night through the real write path: the day's market data, scores, events,
    recommendations and snapshots, then the job run's row."""
    provider = SyntheticProvider(MARKETS)
    kw: dict[str, Any] = {"market": NYSE.code, "day": night.day, "markets": MARKETS}
    fetch_rates(engine, provider, **kw)
    fetch_prices(engine, provider, **kw)
    fetch_fundamentals(engine, provider, **kw)
    report = score_and_recommend(
        engine,
        **kw,
        correlation_id=night.correlation_id,
        calculated_at=night.at,
        run_id=night.run_id,
    )
    run = job_runs.JobRun(
        run_id=night.run_id,
        correlation_id=night.correlation_id,
        started_at=night.at,
        status=audit.COMPLETED if not report.users_failed else audit.PARTIAL,
        market=NYSE.code,
        market_date=night.day,
        completed_at=night.at + timedelta(seconds=report.seconds),
        users_processed=report.users_succeeded + report.users_failed,
        users_failed=report.users_failed,
        metrics={k: v for k, v in report.measures().items() if isinstance(v, int | float | str)},
    )
    with engine.begin() as conn:
        job_runs.record_finished(conn, run)
    return report


# What a copied night takes from its real night: (table, staged rows' filter, ordered by).
_STAGED: tuple[tuple[Table, str, str], ...] = (
    (calculation_events_table, "correlation_id = :cid AND calculated_at = :at", "id"),
    (calculation_assets_table, "correlation_id = :cid AND calculated_at = :at", ""),
    (
        recommendations_table,
        "market_date = :day AND user_id IN (SELECT user_id FROM bench_calculation_events)",
        "",
    ),
    (overnight_job_runs_table, "correlation_id = :cid AND started_at = :at", ""),
    (asset_prices_table, "price_date = :day", ""),
    (asset_fundamentals_table, "fundamentals_date = :day", ""),
    (exchange_rates_table, "rate_date = :day", ""),
)
# Column → its expression in the copy (others are copied as they are); None: left out.
_COPIED: dict[str, dict[str, str | None]] = {
    "calculation_events": {
        "id": None,
        "calculated_at": ":at",
        "created_at": "created_at + :shift",
        "correlation_id": ":cid",
    },
    "calculation_assets": {"calculated_at": ":at", "correlation_id": ":cid"},
    "recommendations": {
        "market_date": ":day",
        "correlation_id": ":cid",
        "generated_at": "generated_at + :shift",
    },
    "overnight_job_runs": {
        "id": ":job_id",
        "run_id": ":run_id",
        "started_at": ":at",
        "completed_at": "completed_at + :shift",
        "correlation_id": ":cid",
        "market_date": ":day",
    },
    "asset_prices": {"price_date": ":day", "as_of": "as_of + :shift"},
    "asset_fundamentals": {"fundamentals_date": ":day", "as_of": "as_of + :shift"},
    "exchange_rates": {"rate_date": ":day", "as_of": "as_of + :shift"},
    # A night's own market snapshot (prices change daily); the month's criteria and inputs
    # snapshots once per month (the same rules and holdings: the same hash).
    "calculation_snapshots": {
        "hash": "CASE kind WHEN 'market' THEN"
        " encode(sha256(convert_to(hash || :day_text, 'UTF8')), 'hex') ELSE hash END",
        "month": ":month",
        "created_at": "created_at + :shift",
    },
}


def _copy(table: Table, *, where: str = "true", conflict: bool = False) -> str:
    """INSERT … SELECT of the staged rows of `table` as the night's (`_COPIED`)."""
    overrides = _COPIED[table.name]
    columns = [c.name for c in table.c if overrides.get(c.name, c.name) is not None]
    values = [overrides.get(c) or c for c in columns]
    return (
        f"INSERT INTO {table.name} ({', '.join(columns)})"
        f" SELECT {', '.join(values)} FROM bench_{table.name} WHERE {where}"
        + (" ON CONFLICT DO NOTHING" if conflict else "")
    )


@dataclass
class Copier:
    """Copies a real night's rows as other nights', server-side, on one connection (its
    staged rows are temporary tables of that session)."""

    conn: Connection
    template: Night | None = None
    months_done: set[date] = field(default_factory=set)

    def stage(self, real: Night) -> None:
        params = {"cid": real.correlation_id, "at": real.at, "day": real.day}
        for table, where, order in _STAGED:
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS bench_{table.name}")
            self.conn.execute(
                text(
                    f"CREATE TEMP TABLE bench_{table.name} AS SELECT * FROM {table.name}"
                    f" WHERE {where}" + (f" ORDER BY {order}" if order else "")
                ),
                params,
            )
        documents = self.conn.execute(
            text("SELECT payload FROM bench_calculation_events WHERE event_type = :t"),
            {"t": audit.INPUTS_CAPTURED},
        ).scalars()
        keys = sorted({key for doc in documents for key in snapshot_keys(doc)})
        self.conn.exec_driver_sql("DROP TABLE IF EXISTS bench_calculation_snapshots")
        self.conn.execute(
            text(
                "CREATE TEMP TABLE bench_calculation_snapshots AS SELECT * FROM"
                " calculation_snapshots WHERE month = :month AND hash = ANY(:keys)"
            ),
            {"month": month_of(real.at), "keys": keys},
        )
        self.template = real
        self.months_done.add(month_of(real.at))

    def copy(self, night: Night) -> None:
        real = self.template
        if real is None:
            raise RuntimeError("no real night staged before the first copy")
        month = month_of(night.at)
        params = {
            "cid": night.correlation_id,
            "at": night.at,
            "shift": night.at - real.at,
            "day": night.day,
            "day_text": night.day.isoformat(),
            "month": month,
            "run_id": night.run_id,
            "job_id": job_runs.JobRun(night.run_id, night.correlation_id, night.at).values()["id"],
        }
        for table, _, _ in _STAGED:
            market_data = table.name in ("asset_prices", "asset_fundamentals", "exchange_rates")
            self.conn.execute(text(_copy(table, conflict=market_data)), params)
        kinds = "kind = 'market'" if month in self.months_done else "true"
        self.conn.execute(
            text(_copy(calculation_snapshots_table, where=kinds, conflict=True)), params
        )
        self.months_done.add(month)


@dataclass
class Written:
    users: int = 0
    real_seconds: float = 0.0
    copy_seconds: float = 0.0
    reports: dict[date, StepReport] = field(default_factory=dict)


def write_nights(engine: Engine, nights: Sequence[Night], *, verbose: bool = False) -> Written:
    """Every night, oldest first: real ones by the write path, the others copied from the
    latest real one before them (committed per night)."""
    if not nights[0].real:
        raise ValueError("the first night must be a real one (the copies' template)")
    with engine.begin() as conn:
        ensure_months(conn, [n.at for n in nights])
    written = Written()
    month_started, month_nights = time.perf_counter(), 0
    with engine.connect() as conn:
        copier = Copier(conn)
        for i, night in enumerate(nights):
            started = time.perf_counter()
            if night.real:
                report = write_real_night(engine, night)
                written.reports[night.day] = report
                written.users = max(
                    written.users,
                    report.users_succeeded + report.users_failed,
                )
                copier.stage(night)
                conn.commit()
                written.real_seconds += time.perf_counter() - started
            else:
                copier.copy(night)
                conn.commit()
                written.copy_seconds += time.perf_counter() - started
            month_nights += 1
            last = i + 1 == len(nights) or month_of(nights[i + 1].at) != month_of(night.at)
            if verbose and last:
                reals = sum(n.real for n in nights if month_of(n.at) == month_of(night.at))
                print(
                    f"  {night.day:%Y-%m}: {month_nights} nights ({reals} real) in"
                    f" {time.perf_counter() - month_started:.1f} s ({load()})",
                    flush=True,
                )
                month_started, month_nights = time.perf_counter(), 0
    return written


# Sizes ------------------------------------------------------------------------------------


def table_sizes(conn: Connection) -> dict[str, int]:
    """pg_total_relation_size (heap, TOAST, indexes) of every table of the app's schema, a
    partitioned table's being the sum of its months (alembic_version aside)."""
    rows = conn.execute(
        text(
            "SELECT coalesce(pg_partition_root(c.oid)::text, c.relname),"
            " sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
            " AND c.relname <> 'alembic_version' GROUP BY 1"
        )
    ).all()
    return {name: int(size) for name, size in rows}


def stored_event_bytes(conn: Connection, night: Night) -> dict[str, float]:
    """Mean stored payload bytes per event type of one night's calculation."""
    rows = conn.execute(
        text(
            "SELECT event_type, avg(pg_column_size(payload)) FROM calculation_events"
            " WHERE correlation_id = :cid AND calculated_at = :at GROUP BY 1"
        ),
        {"cid": night.correlation_id, "at": night.at},
    ).all()
    return {kind: float(size) for kind, size in rows}


def stored_snapshot_bytes(conn: Connection, month: date) -> dict[str, tuple[int, float]]:
    """(count, mean stored payload bytes) of each kind of snapshot of one month."""
    rows = conn.execute(
        text(
            "SELECT kind, count(*), avg(pg_column_size(payload)) FROM calculation_snapshots"
            " WHERE month = :month GROUP BY 1"
        ),
        {"month": month},
    ).all()
    return {kind: (int(n), float(size)) for kind, n, size in rows}


# Queries ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One asset-X query: the asset, the user (None: the operator's), the cursor (None: the
    first page)."""

    asset_id: uuid.UUID
    user_id: uuid.UUID | None
    before: CalculationCursor | None = None


def sample_cases(
    conn: Connection, night: Night, *, samples: int, rng: random.Random
) -> tuple[list[Case], list[Case]]:
    """`samples` random assets (operator) and (user, asset) pairs (user) among those that
    `night` calculated."""
    held = conn.execute(
        text(
            "SELECT DISTINCT u.user_id, ca.asset_id FROM calculation_assets ca,"
            " unnest(ca.user_ids) AS u(user_id)"
            " WHERE ca.calculated_at = :at ORDER BY u.user_id, ca.asset_id"
        ),
        {"at": night.at},
    ).all()
    assets = sorted({a for _, a in held})
    operator = [Case(a, None) for a in rng.choices(assets, k=samples)]
    user = [Case(a, u) for u, a in rng.choices(held, k=samples)]
    return operator, user


def deep(conn: Connection, cases: Iterable[Case], moment: datetime) -> list[Case]:
    """Each case with the cursor of a real row: the newest of its calculations at or before
    `moment` (its first page there)."""
    out = []
    for case in cases:
        boundary = CalculationCursor(moment, LAST_UUID, LAST_UUID)
        rows = page(conn, Case(case.asset_id, case.user_id, boundary), limit=1)
        if rows:
            out.append(Case(case.asset_id, case.user_id, rows[0].cursor))
    return out


def page(conn: Connection, case: Case, *, limit: int = PAGE) -> list[AssetCalculation]:
    return calculations_for_asset(
        conn, asset_id=case.asset_id, user_id=case.user_id, limit=limit, before=case.before
    )


def _key(row: AssetCalculation) -> tuple[datetime, uuid.UUID, uuid.UUID]:
    return (row.calculated_at, row.correlation_id, row.user_id)


def page_problems(case: Case, rows: Sequence[AssetCalculation]) -> list[str]:
    """What is wrong with a page of `case`: other assets or users, not newest first (by the
    cursor's order), rows not after the cursor."""
    problems = []
    if any(r.asset_id != case.asset_id for r in rows):
        problems.append("a row of another asset")
    if case.user_id is not None and any(r.user_id != case.user_id for r in rows):
        problems.append("a row of another user")
    keys = [_key(r) for r in rows]
    if keys != sorted(keys, reverse=True) or len(set(keys)) != len(keys):
        problems.append("not newest first")
    if case.before is not None and keys:
        b = case.before
        if keys[0] >= (b.calculated_at, b.correlation_id, b.user_id):
            problems.append("a row not after the cursor")
    return problems


@dataclass
class Timings:
    label: str
    ms: list[float]
    rows: int
    problems: list[str]

    def percentile(self, q: float) -> float:
        """Nearest rank: the smallest time at least a share `q` of the samples reach."""
        ordered = sorted(self.ms)
        return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def time_cases(conn: Connection, label: str, cases: Sequence[Case]) -> Timings:
    """Each case once to warm the cache, then timed (ms, from this process)."""
    for case in cases:
        page(conn, case)
    ms, rows, problems = [], 0, []
    for case in cases:
        started = time.perf_counter()
        found = page(conn, case)
        ms.append((time.perf_counter() - started) * 1000)
        rows += len(found)
        problems += page_problems(case, found)
        if not found:
            problems.append("an empty page")
    return Timings(label, ms, rows, problems)


def walk(conn: Connection, case: Case, *, limit: int = PAGE) -> list[AssetCalculation]:
    """Every calculation of `case`, page after page by keyset cursor."""
    rows: list[AssetCalculation] = []
    before = case.before
    while True:
        found = page(conn, Case(case.asset_id, case.user_id, before), limit=limit)
        rows += found
        if len(found) < limit:
            return rows
        before = found[-1].cursor


def explain(conn: Connection, case: Case, *, analyze: bool = False) -> str:
    stmt = calculations_statement(
        asset_id=case.asset_id, user_id=case.user_id, limit=PAGE, before=case.before
    )
    sql = stmt.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
    options = "ANALYZE, COSTS OFF, TIMING OFF, SUMMARY OFF" if analyze else "COSTS OFF"
    return "\n".join(conn.exec_driver_sql(f"EXPLAIN ({options}) {sql}").scalars())


_SCAN = re.compile(
    r"(?P<kind>(?:Bitmap Heap|Bitmap Index|Index Only|Index|Seq) Scan(?: Backward)?)"
    r"(?: using (?P<using>\w+))? on (?P<on>\w+)"
    r".*\((?:actual rows=(?P<rows>\d+)|(?P<never>never executed))"
)
_MONTH_PREFIX = re.compile(r"^\w+?_p\d{4}_\d{2}_")


def plan_summary(plan: str) -> str:
    """One line of an EXPLAIN ANALYZE: the nodes above the scans, then each kind of scan
    (by index) with the partitions it ran on, those executed and the rows they returned."""
    lines = plan.splitlines()
    top = []
    for line in lines:
        node = line.strip().removeprefix("->").strip().split(" (")[0]
        if "Scan" in node:
            break
        if line.lstrip().startswith("->") or not line.startswith(" "):
            top.append(node)
    scans: dict[str, list[int]] = {}
    for found in map(_SCAN.search, lines):
        if found is None:
            continue
        index = found["using"] or (found["on"] if "Index" in found["kind"] else "")
        name = f"{found['kind']} ({_MONTH_PREFIX.sub('', index)})" if index else found["kind"]
        counts = scans.setdefault(name, [0, 0, 0])
        counts[0] += 1
        counts[1] += found["never"] is None
        counts[2] += int(found["rows"] or 0)
    parts = [f"{name} ×{n}: {ran} run, {rows} rows" for name, (n, ran, rows) in scans.items()]
    return " → ".join(top) + "; " + "; ".join(parts)


# Replay and retention ---------------------------------------------------------------------


def replay(engine: Engine, night: Night, *, users: int) -> tuple[ReplayOutcome, float]:
    started = time.perf_counter()
    outcome = replay_sample(
        engine, correlation_id=night.correlation_id, day=night.day, sample_size=users
    )
    return outcome, time.perf_counter() - started


def month_counts(conn: Connection, month: date) -> dict[str, int]:
    """Rows of each partitioned table in `month`, counted through the parent."""
    out = {}
    for table, key in PARTITIONED.items():
        bounds: tuple[date | datetime, ...] = (month, next_month(month))
        if table != "calculation_snapshots":
            bounds = tuple(datetime.combine(d, clock(0, tzinfo=UTC)) for d in bounds)
        out[table] = conn.execute(
            text(f"SELECT count(*) FROM {table} WHERE {key} >= :lo AND {key} < :hi"),
            {"lo": bounds[0], "hi": bounds[1]},
        ).scalar_one()
    return out


@dataclass
class Expiry:
    now: datetime
    seconds: float
    dropped: list[str]
    created: list[str]
    estimated: dict[str, int]
    before: dict[date, dict[str, int]]
    after: dict[date, dict[str, int]]
    months_left: list[date]

    @property
    def exact(self) -> bool:
        """The oldest month's rows are gone and the next month's all there."""
        oldest, kept = sorted(self.before)
        return not any(self.after[oldest].values()) and self.after[kept] == self.before[kept]


def expire_oldest_month(engine: Engine, nights: Sequence[Night]) -> Expiry:
    """Retention run one second past `RETENTION_YEARS` after the end of the first night's
    month: that month (and only it) is wholly expired."""
    oldest = month_of(nights[0].at)
    kept = next_month(oldest)
    now = datetime.combine(kept, clock(0, 0, 1, tzinfo=UTC))
    now = now.replace(year=now.year + RETENTION_YEARS)
    with engine.connect() as conn:
        before = {m: month_counts(conn, m) for m in (oldest, kept)}
    report = delete_expired(engine, now=now)
    with engine.connect() as conn:
        after = {m: month_counts(conn, m) for m in (oldest, kept)}
        left = sorted({m for _, m in existing(conn)})
    return Expiry(
        now, report.seconds, report.dropped, report.created, report.deleted, before, after, left
    )


# The benchmark ----------------------------------------------------------------------------


def _mb(size: int) -> float:
    return size / 2**20


def report_sizes(
    conn: Connection, baseline: Mapping[str, int], nights: Sequence[Night], users: int
) -> float:
    """Print the size of every table and of the months of the two largest; returns the
    growth in KB per user-night since `baseline`."""
    user_nights = users * len(nights)
    sizes = table_sizes(conn)
    grown = {t: sizes[t] - baseline.get(t, 0) for t in sizes}
    print(
        f"size after {len(nights)} nights of {users:,} users ({user_nights:,} user-nights;"
        " grown: since the seed):"
    )
    print("| table | MB | grown MB | bytes per user-night |")
    print("| --- | ---: | ---: | ---: |")
    for table in sorted(sizes, key=lambda t: sizes[t], reverse=True):
        if sizes[table] >= 2**20:
            print(
                f"| {table} | {_mb(sizes[table]):,.1f} | {_mb(grown[table]):,.1f} |"
                f" {grown[table] / user_nights:,.0f} |"
            )
    total, growth = sum(sizes.values()), sum(grown.values())
    print(
        f"| **all tables** | **{_mb(total):,.1f}** | {_mb(growth):,.1f} |"
        f" {growth / user_nights:,.0f} |"
    )
    # Copies store what the real nights do: every month costs the same per user-night.
    per_month: dict[date, int] = {}
    for night in nights:
        per_month[month_of(night.at)] = per_month.get(month_of(night.at), 0) + 1
    for table in ("calculation_events", "calculation_assets"):
        months = existing(conn)
        spread = [
            conn.execute(
                text("SELECT pg_total_relation_size(CAST(:name AS regclass))"),
                {"name": months[(table, month)]},
            ).scalar_one()
            / (count * users)
            for month, count in per_month.items()
        ]
        print(
            f"{table}, bytes per user-night of each month: {min(spread):,.0f} to {max(spread):,.0f}"
        )
    return growth / user_nights / 1024


@dataclass
class Queries:
    runs: list[Timings]
    walked: bool
    plans: dict[str, str]

    @property
    def problems(self) -> list[str]:
        return sorted({p for r in self.runs for p in r.problems})


def measure_queries(
    engine: Engine, nights: Sequence[Night], *, samples: int, deep_at: datetime, label: str
) -> Queries:
    """The four asset-X queries over `samples` random cases each, a keyset walk of one
    user's asset, and the plans."""
    rng = random.Random(15)
    with engine.connect() as conn:
        operator, user = sample_cases(conn, nights[-1], samples=samples, rng=rng)
        cases = {
            "operator, first page": operator,
            "user, first page": user,
            f"operator, {label}": deep(conn, operator, deep_at),
            f"user, {label}": deep(conn, user, deep_at),
        }
        runs = [time_cases(conn, name, chosen) for name, chosen in cases.items()]
        walked = walk(conn, user[0])
        everything = conn.execute(
            text(
                "SELECT count(*) FROM calculation_assets ca, unnest(ca.user_ids) AS u(user_id)"
                " WHERE ca.asset_id = :a AND u.user_id = :u"
            ),
            {"a": user[0].asset_id, "u": user[0].user_id},
        ).scalar_one()
        plans = {name: explain(conn, chosen[0], analyze=True) for name, chosen in cases.items()}
    ok = len(walked) == everything == len({_key(r) for r in walked})
    print(f"\nasset-X queries, {PAGE} rows a page, warm, ms from this process ({load()}):")
    print("| query | samples | p50 ms | p99 ms | max ms | rows a page |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for r in runs:
        print(
            f"| {r.label} | {len(r.ms)} | {r.percentile(0.5):.2f} | {r.percentile(0.99):.2f}"
            f" | {max(r.ms):.2f} | {r.rows / len(r.ms):.1f} |"
        )
    queries = Queries(runs, ok, plans)
    print(
        f"pages checked (asset, user, newest first, after the cursor): {queries.problems or 'ok'};"
        f" keyset walk of one user's asset: {len(walked)} rows in {-(-len(walked) // PAGE)}"
        f" pages, {everything} in the table: {'ok' if ok else 'WRONG'}"
    )
    first = next(iter(plans))
    print(f"\nEXPLAIN (ANALYZE, COSTS OFF) of one {first}:\n{plans[first]}")
    print("\nthe plans of one query of each kind (scans of the monthly partitions):")
    for name, plan in plans.items():
        print(f"  {name}: {plan_summary(plan)}")
    return queries


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--months", type=int, default=24, help="of nights before --now")
    parser.add_argument("--real", type=int, default=6, help="nights by the real write path")
    parser.add_argument("--samples", type=int, default=200, help="queries of each kind")
    parser.add_argument("--now", type=date.fromisoformat, default=NOW.date())
    parser.add_argument("--replay-months", type=int, default=REPLAY_MONTHS_BACK)
    parser.add_argument("--deep-months", type=int, default=DEEP_MONTHS_BACK)
    parser.add_argument("--keep", action="store_true", help="keep the database (prints its URL)")
    args = parser.parse_args()
    for name in ("replay_months", "deep_months"):
        if not 0 < getattr(args, name) < args.months:
            parser.error(
                f"--{name.replace('_', '-')} must be between 1 and --months - 1"
                f" ({args.months - 1}) (got {getattr(args, name)})"
            )
    now = datetime.combine(args.now, clock(0, tzinfo=UTC))
    nights = plan_nights(now, months=args.months, real=args.real, replay_months=args.replay_months)
    replayed = night_near(nights, months_back(now, args.replay_months), real=True)
    print(
        f"two-year audit, {args.users:,} NYSE users: {len(nights)} nights {nights[0].day} →"
        f" {nights[-1].day}, {sum(n.real for n in nights)} by the real write path"
        f" ({', '.join(str(n.day) for n in nights if n.real)}) ({load()})",
        flush=True,
    )
    url = create_pg_database("overnight_two_year_bench")
    engine = make_engine(url)
    phases: dict[str, float] = {}
    try:
        migrate(url)
        started = time.perf_counter()
        seed_users(url, args.users, nights[0].day)
        phases["seed"] = time.perf_counter() - started
        print(f"seeded in {phases['seed']:.1f} s ({load()})", flush=True)
        with engine.connect() as conn:
            baseline = table_sizes(conn)

        started = time.perf_counter()
        written = write_nights(engine, nights, verbose=True)
        phases["nights"] = time.perf_counter() - started
        real = sum(n.real for n in nights)
        print(
            f"{len(nights)} nights in {phases['nights']:.1f} s: {real} real in"
            f" {written.real_seconds:.1f} s, {len(nights) - real} copied in"
            f" {written.copy_seconds:.1f} s ({load()})",
            flush=True,
        )
        started = time.perf_counter()
        maintain(url)
        phases["vacuum"] = time.perf_counter() - started
        print(f"VACUUM (ANALYZE) in {phases['vacuum']:.1f} s ({load()})\n", flush=True)

        # 1. Size
        with engine.connect() as conn:
            growth_kb = report_sizes(conn, baseline, nights, written.users)
            copied = next(n for n in nights if not n.real and n.at > replayed.at)
            payloads = {n.real: stored_event_bytes(conn, n) for n in (replayed, copied)}
            kinds = stored_snapshot_bytes(conn, month_of(replayed.at))
        print("stored payload bytes per event, real night / copied night:", end="")
        for kind in sorted(payloads[True]):
            print(
                f" {kind} {payloads[True][kind]:,.0f} / {payloads[False].get(kind, 0):,.0f};",
                end="",
            )
        print(flush=True)
        print(f"snapshots of {month_of(replayed.at):%Y-%m}, count and stored bytes each:", end="")
        for kind, (n, size) in sorted(kinds.items()):
            print(f" {kind} {n:,} × {size:,.0f};", end="")
        print(flush=True)

        # 2. Queries
        started = time.perf_counter()
        queries = measure_queries(
            engine,
            nights,
            samples=args.samples,
            deep_at=months_back(now, args.deep_months),
            label=f"{args.deep_months} months back",
        )
        phases["queries"] = time.perf_counter() - started

        # 3. Replay
        outcome, replay_s = replay(engine, replayed, users=written.users)
        phases["replay"] = replay_s
        print(
            f"\nreplay of {replayed.day} ({(now - replayed.at).days / 30.44:.1f} months back):"
            f" {len(outcome.checked)} of {outcome.users} users in {replay_s:.2f} s,"
            f" mismatches: {outcome.mismatches[:5] or 'none'} ({load()})",
            flush=True,
        )

        # 4. Retention
        expiry = expire_oldest_month(engine, nights)
        phases["retention"] = expiry.seconds
        after, _ = replay(engine, replayed, users=25)
        print(
            f"\nretention at {expiry.now:%Y-%m-%d %H:%M:%S}: {len(expiry.dropped)} partitions"
            f" dropped and {len(expiry.created)} created ahead in"
            f" {expiry.seconds * 1000:.0f} ms ({load()}): {', '.join(expiry.dropped)}"
        )
        oldest, kept = sorted(expiry.before)
        print(
            f"| table | rows dropped (estimate) | rows of {oldest:%Y-%m} before → after |"
            f" rows of {kept:%Y-%m} before → after |"
        )
        print("| --- | ---: | ---: | ---: |")
        for table in PARTITIONED:
            print(
                f"| {table} | {expiry.estimated.get(table, 0):,} |"
                f" {expiry.before[oldest][table]:,} → {expiry.after[oldest][table]:,} |"
                f" {expiry.before[kept][table]:,} → {expiry.after[kept][table]:,} |"
            )
        print(
            f"months left: {expiry.months_left[0]:%Y-%m} → {expiry.months_left[-1]:%Y-%m};"
            f" {replayed.day} replayed again after it (25 users):"
            f" {'exact' if not after.mismatches else after.mismatches[:3]}"
        )
    finally:
        engine.dispose()
        if args.keep:
            print(f"kept: {url}")
        else:
            drop_pg_database(url)

    p99 = max(r.percentile(0.99) for r in queries.runs[:2])
    exact = not outcome.mismatches and not after.mismatches
    exact = exact and len(outcome.checked) == outcome.users > 0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\nphases: {', '.join(f'{k} {v:.1f} s' for k, v in phases.items())};"
        f" peak RSS {rss:.0f} MB ({load()})"
    )
    verdicts = [
        (
            p99 < P99_TARGET_MS and not queries.problems and queries.walked,
            f"asset-X first page p99 {p99:.2f} ms, operator and user (target < {P99_TARGET_MS:.0f} ms)",
        ),
        (
            expiry.seconds < RETENTION_TARGET_S and expiry.exact,
            f"retention of the oldest month in {expiry.seconds * 1000:.0f} ms, its rows gone and"
            f" the next month's intact (target < {RETENTION_TARGET_S:.0f} s)",
        ),
        (
            exact,
            f"exact replay of {replayed.day}: {len(outcome.checked)} users,"
            f" {len(outcome.mismatches)} mismatches, {replay_s:.2f} s",
        ),
        (
            growth_kb <= GROWTH_TARGET_KB,
            f"growth {growth_kb:.2f} KB per user-night over {len(nights)} nights (target ≤"
            f" {GROWTH_TARGET_KB:.0f} KB in the two-year simulation; storage_bench's night: ≤ 7 KB)",
        ),
    ]
    for met, what in verdicts:
        print(f"{'MET' if met else 'MISSED'}: {what}")


if __name__ == "__main__":
    main()
