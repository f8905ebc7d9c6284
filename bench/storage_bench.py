"""Benchmark: bytes PostgreSQL keeps per processed user per night (BEHAVIOUR §4, §8).

    .venv/bin/python bench/storage_bench.py [--users 10000] [--nights 3]

A throwaway PostgreSQL database is seeded (in a child process) with users who all hold NYSE
assets, then the partition `DAY|NYSE` of `--nights` consecutive NYSE sessions is
materialised through Dagster, as the schedule would run it (Redis entries under a
throwaway prefix). After each night the database is vacuumed, as autovacuum would be
(plain VACUUM: space freed inside a table is reused by the next night, never returned).
The figure is the growth of the last night: `pg_total_relation_size` (heap, TOAST and
indexes) of every table of the app's schema after it, minus before it, divided by the users
the night processed. The first nights only bring the database to its steady state (what a
table keeps per user rather than per night is written once and then replaced).

Prints KB per user-night by table and in total, the stored size of each event type, and
MET/MISSED against the target (≤ 7 KB). The month's criteria and inputs snapshots are
written on its first night (a user's rules and own inputs are stored once a month while they
do not change): the first night's growth of `calculation_snapshots` beyond the last
night's, spread over the month's sessions, is added to the figure the target is checked
against.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from datetime import date

import psycopg
import redis
from dagster import DagsterInstance

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.core.markets import DEFAULT_MARKETS, is_session
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

REDIS_URL = "redis://127.0.0.1:6379/0"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
TARGET_KB = 7.0  # BEHAVIOUR §8, issue 25 (was 10)
FIRST_NIGHT = date(2026, 11, 23)

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


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def sessions(first: date, n: int) -> list[date]:
    """`n` consecutive NYSE sessions from `first` on (its exchange calendar)."""
    nyse = next(m for m in DEFAULT_MARKETS if m.code == "NYSE")
    found: list[date] = []
    day = first
    while len(found) < n:
        if is_session(nyse, day):
            found.append(day)
        day = date.fromordinal(day.toordinal() + 1)
    return found


def table_sizes(url: str) -> dict[str, int]:
    """pg_total_relation_size of every table of the app's schema (alembic_version aside),
    a partitioned table's being the sum of its monthly partitions'."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        rows = conn.execute(
            "SELECT coalesce(pg_partition_root(c.oid)::text, c.relname) AS name,"
            " sum(pg_total_relation_size(c.oid))::bigint FROM pg_class c"
            " WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind IN ('r', 'p')"
            " AND c.relname <> 'alembic_version' GROUP BY 1"
        ).fetchall()
    return dict(rows)


def vacuum(url: str) -> None:
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def run_night(url: str, prefix: str, day: date) -> tuple[uuid.UUID, int, float]:
    """One partition through Dagster; (correlation id, users completed, seconds)."""
    os.environ.update(
        {
            "DATABASE_URL": url,
            "REDIS_URL": REDIS_URL,
            "CACHE_PREFIX": prefix,
            "USER_SHARDS": "1",
            "OVERNIGHT_EXECUTOR": "in_process",
        }
    )
    job = definitions_for(load_settings(), env_vars=False).resolve_job_def(OVERNIGHT_JOB)
    with DagsterInstance.ephemeral() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(
            instance=instance, partition_key=partition_key("NYSE", day), run_config=QUIET
        )
        seconds = time.perf_counter() - started
        assert result.success, "the benchmark run failed"
    cid = correlation_id_for(f"{result.run_id}:{day.isoformat()}|NYSE")
    with psycopg.connect(_libpq(url)) as conn:
        users = conn.execute(
            "SELECT count(*) FROM calculation_events WHERE correlation_id = %s"
            " AND event_type = 'CALC_COMPLETED'",
            (cid,),
        ).fetchone()[0]
    return cid, users, seconds


def event_sizes(url: str, cid: uuid.UUID) -> list[tuple[str, float, float]]:
    """(event type, mean JSON text bytes, mean stored bytes) of one calculation's events."""
    with psycopg.connect(_libpq(url)) as conn:
        return conn.execute(
            "SELECT event_type, avg(octet_length(payload::text)), avg(pg_column_size(payload))"
            " FROM calculation_events WHERE correlation_id = %s GROUP BY event_type"
            " ORDER BY event_type",
            (cid,),
        ).fetchall()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--nights", type=int, default=3, help="the last one is measured")
    args = parser.parse_args()
    if args.nights < 1:
        parser.error("--nights must be at least 1")
    url = create_pg_database("overnight_storage_bench")
    prefix = f"bench-storage-{uuid.uuid4().hex[:8]}:"
    nights = sessions(FIRST_NIGHT, args.nights)
    try:
        migrate(url)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", SEED, url, str(args.users), nights[0].isoformat()], check=True
        )
        print(f"storage, {args.users:,} NYSE users seeded in {time.perf_counter() - started:.1f} s")
        vacuum(url)
        snapshot_growth = []
        for day in nights:
            before = table_sizes(url)
            cid, users, seconds = run_night(url, prefix, day)
            vacuum(url)
            after = table_sizes(url)
            snapshot_growth.append(
                after.get("calculation_snapshots", 0) - before.get("calculation_snapshots", 0)
            )
            print(f"  night {day}: {users:,} users in {seconds:.1f} s")
        sizes = event_sizes(url, cid)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*", count=5000):
            client.delete(key)
        client.close()
        make_engine(url).dispose()
        drop_pg_database(url)

    print(f"\ngrowth of the night of {nights[-1]} ({users:,} users), after VACUUM:")
    print("| table | KB per user-night | MB in all after |")
    print("| --- | ---: | ---: |")
    total = 0
    for table in sorted(after, key=lambda t: after[t] - before.get(t, 0), reverse=True):
        grown = after[table] - before.get(table, 0)
        total += grown
        if grown or after[table] > 8192 * 4:
            print(f"| {table} | {grown / users / 1024:.2f} | {after[table] / 2**20:.1f} |")
    per_user = total / users / 1024
    print(f"| **total** | **{per_user:.2f}** | {sum(after.values()) / 2**20:.1f} |")
    print("\n| event | JSON text bytes | stored bytes |")
    print("| --- | ---: | ---: |")
    for kind, text_bytes, stored in sizes:
        print(f"| {kind} | {text_bytes:,.0f} | {stored:,.0f} |")
    # The month's criteria and inputs snapshots are written on its first night only (the
    # last night measured writes its market snapshot alone): their bytes, spread over the
    # month's sessions, count in the figure the target is checked against.
    monthly = max(snapshot_growth[0] - snapshot_growth[-1], 0) if len(nights) > 1 else 0
    month = nights[0].replace(day=1)
    month_sessions = sum(d.month == month.month for d in sessions(month, 23))
    spread = monthly / users / 1024 / month_sessions
    amortised = per_user + spread
    print(
        f"\nthe month's criteria and inputs snapshots (its first night's): "
        f"{monthly / users / 1024:.2f} KB a user, {spread:.2f} KB per user-night over its"
        f" {month_sessions} sessions"
    )
    verdict = "MET" if amortised <= TARGET_KB else "MISSED"
    print(
        f"\n{verdict}: PostgreSQL growth {amortised:.2f} KB per processed user per night with"
        f" the month's snapshots ({per_user:.2f} the last night alone; target ≤"
        f" {TARGET_KB:.0f} KB)"
    )


if __name__ == "__main__":
    main()
