"""Benchmark: one market-date partition end to end through Dagster, PostgreSQL and Redis,
against the I/O floor of its own output.

    .venv/bin/python bench/pipeline_bench.py [--users 1000 10000] [--with-100k]
                                             [--shards 1 2] [--executor in_process]

For each size a throwaway PostgreSQL database is seeded (in a child process, so that its
memory is not counted) with users who all hold NYSE assets. The partition `DAY|NYSE` is then
materialised once per shard count (output tables truncated and the Redis prefix emptied in
between): one shard runs in process (`execute_in_process`), more shards on the executor
given (multiprocess by default: a reconstructable job, a temporary persistent instance).

The floor is what any implementation producing the same output must spend, measured right
after the first run, on the same database and Redis:
- writes: binary COPY of exactly the rows the run wrote (its events, scores, asset-X index
  and recommendation rows by correlation id, the day's market data) into empty twins of
  their tables with the same columns, compression, indexes, constraints and foreign keys;
- reads: binary COPY out of every input row the partition reads (users, classes, holdings,
  criteria, assets, prices, fundamentals, rates: every user of the database is a
  partition user here);
- Redis: the run's cache entries set again (SET … EX, pipelined 1,000 at a time).

Prints per-step seconds, users/s, peak RSS per process, the ratio to the floor and each
target with MET/MISSED. Results are recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import psycopg
import redis
from dagster import (
    DagsterEventType,
    DagsterInstance,
    build_reconstructable_job,
    execute_job,
)

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

DAY = date(2026, 11, 27)
KEY = f"{DAY.isoformat()}|NYSE"
REDIS_URL = "redis://127.0.0.1:6379/0"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
OUTPUT_TABLES = ("calculation_events", "asset_scores", "calculation_assets", "recommendations")
MARKET_TABLES = {
    "exchange_rates": "rate_date",
    "asset_prices": "price_date",
    "asset_fundamentals": "fundamentals_date",
}
INPUT_TABLES = (
    "users",
    "asset_classes",
    "holdings",
    "criteria_versions",
    "criteria_rules",
    "assets",
    "asset_prices",
    "asset_fundamentals",
    "exchange_rates",
)
STEPS = {  # label: step keys starting with
    "exchange_rates": "exchange_rates",
    "prices": "asset_prices",
    "fundamentals": "asset_fundamentals",
    "shards": "scores_and_recommendations.score_and_recommend_shard",
    "collect": "scores_and_recommendations.collect_shards",
    "cache": "recommendation_cache",
}
RATIO_TARGET, WALL_100K, RSS_LIMIT_MB = 1.5, 60.0, 1024.0
RESULT = "RESULT "

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
# What autovacuum does after a bulk load on a production server (it is off on this one): the
# night's runs find planner statistics, as every night but the first after a load does.
with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
    conn.exec_driver_sql("ANALYZE")
"""


@dataclass
class Run:
    shards: int
    executor: str
    wall: float
    users: int
    steps: dict[str, float]
    peak_rss_mb: float
    correlation_id: uuid.UUID
    python_cpu: float | None = None  # CPU seconds of the pipeline's own process (in process)
    floor: dict[str, float] = field(default_factory=dict)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _step_seconds(stats: Any) -> dict[str, float]:
    """Wall seconds of each group of steps (shards side by side: first start to last end)."""
    out = {}
    for label, prefix in STEPS.items():
        mine = [s for s in stats if s.step_key.startswith(prefix) and s.start_time and s.end_time]
        if mine:
            out[label] = max(s.end_time for s in mine) - min(s.start_time for s in mine)
    return out


def run_partition(url: str, prefix: str, shards: int, executor: str) -> Run:
    """The partition through Dagster, as the schedule would run it."""
    env = {
        "DATABASE_URL": url,
        "REDIS_URL": REDIS_URL,
        "CACHE_PREFIX": prefix,
        "USER_SHARDS": str(shards),
        "OVERNIGHT_EXECUTOR": "in_process" if shards == 1 else executor,
    }
    os.environ.update(env)
    settings = load_settings()
    if shards == 1:
        job = definitions_for(settings, env_vars=False).resolve_job_def(OVERNIGHT_JOB)
        with DagsterInstance.ephemeral() as instance:
            cpu = _cpu_seconds()
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance, partition_key=partition_key("NYSE", DAY), run_config=QUIET
            )
            wall = time.perf_counter() - started
            python_cpu = _cpu_seconds() - cpu
            assert result.success, "the benchmark run failed"
            run_id = result.run_id
            steps = _step_seconds(instance.get_run_step_stats(run_id))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        job = build_reconstructable_job(
            "overnight_pipeline_tests.support.shard_job", "overnight_job"
        )
        with (
            tempfile.TemporaryDirectory() as home,
            DagsterInstance.local_temp(tempdir=home) as instance,
        ):
            started = time.perf_counter()
            with execute_job(
                job,
                instance=instance,
                tags={
                    "dagster/partition": KEY,
                    "dagster/partition/date": DAY.isoformat(),
                    "dagster/partition/market": "NYSE",
                },
                run_config=QUIET,
            ) as result:
                wall = time.perf_counter() - started
                assert result.success, [
                    str(e.event_specific_data)[:500] for e in result.all_events if e.is_failure
                ]
                run_id = result.run_id
                shard_peaks = [
                    e.step_output_data.metadata["peak_rss_mb"].value
                    for e in result.all_events
                    if e.event_type == DagsterEventType.STEP_OUTPUT
                    and "peak_rss_mb" in e.step_output_data.metadata
                ]
            steps = _step_seconds(instance.get_run_step_stats(run_id))
        python_cpu = None
        # Each shard's process reports its own peak; the orchestrating process is this one.
        rss = max([*shard_peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    cid = correlation_id_for(f"{run_id}:{KEY}")
    with psycopg.connect(_libpq(url)) as conn:
        users = conn.execute(
            "SELECT count(*) FROM calculation_events WHERE correlation_id = %s"
            " AND event_type = 'CALC_COMPLETED' AND payload->>'status' = 'completed'",
            (cid,),
        ).fetchone()[0]
    return Run(shards, executor, wall, users, steps, rss, cid, python_cpu)


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def floor(url: str, prefix: str, cid: uuid.UUID) -> dict[str, float]:
    """Seconds of the I/O any implementation of this output must do (see the docstring)."""
    figures: dict[str, float] = {}
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        wrote: dict[str, str] = {t: f"correlation_id = '{cid}'" for t in OUTPUT_TABLES}
        wrote |= {t: f"{col} = '{DAY.isoformat()}'" for t, col in MARKET_TABLES.items()}
        write_seconds = 0.0
        for table, where in wrote.items():
            # Spooled to a file, not held in memory (≈ 3 GB at 100,000 users); read back
            # from the page cache while timed.
            with tempfile.TemporaryFile() as data:
                with conn.cursor().copy(
                    f"COPY (SELECT * FROM {table} WHERE {where}) TO STDOUT (FORMAT BINARY)"
                ) as copy:
                    for block in copy:
                        data.write(block)
                twin = f"floor_twin_{table}"
                conn.execute(f"DROP TABLE IF EXISTS {twin}")
                conn.execute(f"CREATE TABLE {twin} (LIKE {table} INCLUDING ALL)")
                for (definition,) in conn.execute(
                    "SELECT pg_get_constraintdef(oid) FROM pg_constraint"
                    " WHERE conrelid = %s::regclass AND contype = 'f'",
                    (table,),
                ).fetchall():
                    conn.execute(f"ALTER TABLE {twin} ADD {definition}")

                def load(twin: str = twin, data: Any = data) -> None:
                    data.seek(0)
                    with (
                        conn.transaction(),
                        conn.cursor().copy(f"COPY {twin} FROM STDIN (FORMAT BINARY)") as copy,
                    ):
                        while block := data.read(1 << 20):
                            copy.write(block)

                write_seconds += _timed(load)
                conn.execute(f"DROP TABLE {twin}")
        figures["write"] = write_seconds

        def read() -> None:
            for table in INPUT_TABLES:
                with conn.cursor().copy(f"COPY {table} TO STDOUT (FORMAT BINARY)") as copy:
                    for _ in copy:
                        pass

        figures["read"] = _timed(read)
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(f"{prefix}*", count=5000))
    values = client.mget(keys) if keys else []

    def reset() -> None:
        for start in range(0, len(keys), 1000):
            pipe = client.pipeline(transaction=False)
            for key, value in zip(
                keys[start : start + 1000], values[start : start + 1000], strict=True
            ):
                pipe.set(key, value, ex=86_400)
            pipe.execute()

    figures["redis"] = _timed(reset)
    client.close()
    figures["total"] = figures["write"] + figures["read"] + figures["redis"]
    return figures


def reset_output(url: str, prefix: str) -> None:
    """A clean slate for the next run: no output rows, no cache entries, fresh statistics."""
    with psycopg.connect(_libpq(url), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(OUTPUT_TABLES)}")
        conn.execute("ANALYZE")
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*", count=5000):
        client.delete(key)
    client.close()


def bench(users: int, shard_counts: list[int], executor: str) -> list[Run]:
    url = create_pg_database("overnight_bench")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    runs: list[Run] = []
    try:
        migrate(url)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", SEED, url, str(users), DAY.isoformat()], check=True)
        print(f"  seeded {users:,} NYSE users in {time.perf_counter() - started:.1f} s")
        for i, shards in enumerate(shard_counts):
            if i:
                reset_output(url, prefix)
            run = run_partition(url, prefix, shards, executor)
            if i == 0:
                run.floor = floor(url, prefix, run.correlation_id)
            runs.append(run)
            steps = ", ".join(f"{k} {v:.2f}" for k, v in run.steps.items())
            print(
                f"  {shards} shard(s) ({'in_process' if shards == 1 else executor}): "
                f"{run.users:,} users in {run.wall:.1f} s ({run.users / run.wall:,.0f} users/s); "
                f"steps (s): {steps}; peak RSS {run.peak_rss_mb:,.0f} MB"
                + ("" if run.python_cpu is None else f"; Python CPU {run.python_cpu:.1f} s")
            )
            if run.floor:
                f = run.floor
                print(
                    f"  I/O floor {f['total']:.1f} s (COPY of the output {f['write']:.1f} s, "
                    f"inputs {f['read']:.1f} s, Redis {f['redis']:.1f} s): "
                    f"pipeline ÷ floor = {run.wall / f['total']:.2f}×"
                )
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*", count=5000):
            client.delete(key)
        client.close()
        make_engine(url).dispose()
        drop_pg_database(url)
    return runs


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--with-100k", action="store_true", help="also run 100,000 users")
    parser.add_argument("--shards", type=int, nargs="+", default=[1])
    parser.add_argument("--executor", default="multiprocess", choices=["multiprocess", "celery"])
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_size:
        # A process per size: its peak RSS and its settings (which Dagster's forkserver keeps
        # for the life of the process that started it) are that size's alone.
        runs = bench(args.one_size, args.shards, args.executor)
        print(
            RESULT
            + json.dumps([asdict(r) | {"correlation_id": str(r.correlation_id)} for r in runs])
        )
        return
    sizes = list(args.users) + ([100_000] if args.with_100k else [])
    results: dict[int, list[Run]] = {}
    for users in sizes:
        print(f"pipeline, {users:,} users:", flush=True)
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--one-size",
                str(users),
                "--shards",
                *map(str, args.shards),
                "--executor",
                args.executor,
            ],
            stdout=subprocess.PIPE,
            text=True,
            check=True,
        )
        for line in child.stdout.splitlines():
            if line.startswith(RESULT):
                results[users] = [
                    Run(**(r | {"correlation_id": uuid.UUID(r["correlation_id"])}))
                    for r in json.loads(line.removeprefix(RESULT))
                ]
            else:
                print(line, flush=True)

    print("\n| users | shards | wall s | users/s | µs/user | floor s | ÷ floor | peak RSS MB |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for runs in results.values():
        for r in runs:
            floor_s = r.floor.get("total")
            print(
                f"| {r.users:,} | {r.shards} | {r.wall:.1f} | {r.users / r.wall:,.0f} | "
                f"{r.wall / r.users * 1e6:,.0f} | {'' if floor_s is None else f'{floor_s:.1f}'} | "
                f"{'' if floor_s is None else f'{r.wall / floor_s:.2f}×'} | {r.peak_rss_mb:,.0f} |"
            )
    print()
    for users, runs in results.items():
        first = runs[0]
        ratio = first.wall / first.floor["total"]
        if users >= 10_000:
            print(
                f"{verdict(ratio <= RATIO_TARGET)}: pipeline ÷ I/O floor at {users:,} users "
                f"{ratio:.2f}× (target ≤ {RATIO_TARGET}×)"
            )
        worst = max(r.peak_rss_mb for r in runs)
        print(
            f"{verdict(worst <= RSS_LIMIT_MB)}: peak memory per process at {users:,} users "
            f"{worst:,.0f} MB (target ≤ {RSS_LIMIT_MB:,.0f} MB)"
        )
        if users == 100_000:
            print(
                f"{verdict(first.wall <= WALL_100K)}: 100,000 users in {first.wall:.1f} s "
                f"(target ≤ {WALL_100K:.0f} s)"
            )
        if len(runs) > 1:
            for r in runs[1:]:
                print(
                    f"info: {r.shards} shards ({r.executor}) at {users:,} users: {r.wall:.1f} s, "
                    f"speed-up {first.wall / r.wall:.2f}× over 1 shard"
                )
    per_user = {u: runs[0].wall / runs[0].users for u, runs in results.items()}
    if len(per_user) > 1:
        # The two largest sizes: at 1,000 users Dagster's fixed cost per run dominates.
        small, large = sorted(per_user)[-2:]
        growth = per_user[large] / per_user[small]
        print(
            f"{verdict(growth <= 1.25)}: cost linear in users: {per_user[small] * 1e6:,.0f} µs/user "
            f"at {small:,}, {per_user[large] * 1e6:,.0f} at {large:,} ({growth:.2f}×, ≤ 1.25×)"
        )


if __name__ == "__main__":
    main()
