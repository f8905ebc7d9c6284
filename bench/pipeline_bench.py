"""Benchmark: one market-date partition end to end through Dagster, PostgreSQL and Redis,
against the I/O floor of its own output and side by side with an older tree.

    .venv/bin/python bench/pipeline_bench.py [--users 1000 10000] [--with-100k]
                                             [--shards 1 2] [--executor multiprocess]
                                             [--baseline b6acf1f | --no-baseline]

For each size a throwaway PostgreSQL database is seeded (in a child process, so that its
memory is not counted) with users who all hold NYSE assets. The partition `DAY|NYSE` is then
materialised twice per shard count: a first night on empty output tables, then, with the
tables analysed, a steady-state night (the same partition under a new run id: a new
calculation that replaces the current scores). Between shard counts the output tables are
truncated and the Redis prefix emptied. One shard runs in process (`execute_in_process`),
more shards on the executor given (multiprocess by default: a reconstructable job, a
temporary persistent instance).

Each night's CPU is split into Python (this process and all under it) and PostgreSQL (the
server's processes, other databases' backends taken out), read from /proc: see
bench/pipeline_measures.py. The window is the whole `run_partition` call (building the job
definitions included, ≈ 0.1–0.3 CPU-s).

The baseline (`--baseline REV`, b6acf1f by default: main before issue 25) is checked out in a
temporary git worktree and run right after each size, one shard, through its own
bench/pipeline_bench.py (its own migrations, database and seed), with the same two nights and
measures; new ÷ baseline wall is printed per night.

The floor is what any implementation producing the same output must spend, measured right
after the first run, on the same database and Redis:
- writes: binary COPY of exactly the rows the run wrote (its events, scores, asset-X index
  and recommendation rows by correlation id, the day's market data) into empty twins of
  their tables with the same columns, compression, indexes, constraints and foreign keys;
- reads: binary COPY out of every input row the partition reads (users, classes, holdings,
  criteria, assets, prices, fundamentals, rates: every user of the database is a
  partition user here);
- Redis: the run's cache entries set again (SET … EX, pipelined 1,000 at a time).

Prints per-step seconds, users/s, peak RSS per process, CPU per user, the ratio to the floor
and to the baseline, and each target with MET/MISSED (from 10,000 users up: below, a run's
fixed costs dominate and the figures are printed as information). The wall targets (100,000
users, new ÷ baseline) are judged on the fastest shard count measured for each night, named
in the verdict (the baseline runs one shard: its two shards were slower, 0.76×); the CPU
target on the first shard count given. Results are recorded in docs/PERFORMANCE.md.
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
from contextlib import nullcontext
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
from pipeline_measures import (
    RESULT,
    Run,
    child_runs,
    describe,
    libpq,
    run_baseline,
    table,
    two_nights,
    worktree,
)

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.executors import default_execution
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

DAY = date(2026, 11, 27)
KEY = f"{DAY.isoformat()}|NYSE"
REDIS_URL = "redis://127.0.0.1:6379/0"
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
OUTPUT_TABLES = ("calculation_events", "user_scores", "calculation_assets", "recommendations")
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
RATIO_TARGET, RSS_LIMIT_MB = 2.0, 1024.0  # BEHAVIOUR §8: ≤ 2× the floor at 10,000 users
WALL_100K, WALL_100K_FIRST = 60.0, 75.0  # seconds: steady-state night, first night
CPU_PER_USER = 1e-3  # seconds, Python + PostgreSQL
BASELINE_RATIO = 0.4  # new ÷ baseline wall

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
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance, partition_key=partition_key("NYSE", DAY), run_config=QUIET
            )
            wall = time.perf_counter() - started
            assert result.success, "the benchmark run failed"
            run_id = result.run_id
            steps = _step_seconds(instance.get_run_step_stats(run_id))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    else:
        reconstructable = build_reconstructable_job(
            "overnight_pipeline_tests.support.shard_job", "overnight_job"
        )
        with (
            tempfile.TemporaryDirectory() as home,
            DagsterInstance.local_temp(tempdir=home) as instance,
        ):
            started = time.perf_counter()
            with execute_job(
                reconstructable,
                instance=instance,
                tags={
                    "dagster/partition": KEY,
                    "dagster/partition/date": DAY.isoformat(),
                    "dagster/partition/market": "NYSE",
                },
                # The executor as the launchpad names it: the job's own default was read
                # from the settings when the definitions were first imported, before this
                # run's environment was set (it ran several shards in process).
                run_config={**QUIET, "execution": {"config": default_execution(settings)}},
            ) as outcome:
                wall = time.perf_counter() - started
                assert outcome.success, [
                    str(e.event_specific_data)[:500] for e in outcome.all_events if e.is_failure
                ]
                run_id = outcome.run_id
                shard_peaks = [
                    float(e.step_output_data.metadata["peak_rss_mb"].value)  # type: ignore[arg-type]
                    for e in outcome.all_events
                    if e.event_type == DagsterEventType.STEP_OUTPUT
                    and "peak_rss_mb" in e.step_output_data.metadata
                ]
            steps = _step_seconds(instance.get_run_step_stats(run_id))
        # Each shard's process reports its own peak; the orchestrating process is this one.
        rss = max([*shard_peaks, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024])
    cid = correlation_id_for(f"{run_id}:{KEY}")
    with psycopg.connect(libpq(url)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM calculation_events WHERE correlation_id = %s"
            " AND event_type = 'CALC_COMPLETED' AND payload->>'status' = 'completed'",
            (cid,),
        ).fetchone()
    users = row[0] if row else 0
    return Run(shards, executor, wall, users, steps, rss, cid)


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def floor(url: str, prefix: str, cid: uuid.UUID) -> dict[str, float]:
    """Seconds of the I/O any implementation of this output must do (see the docstring)."""
    figures: dict[str, float] = {}
    with psycopg.connect(libpq(url), autocommit=True) as conn:
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
                if value is not None:  # an entry expired in between: nothing to set
                    pipe.set(key, value, ex=86_400)
            pipe.execute()

    figures["redis"] = _timed(reset)
    client.close()
    figures["total"] = figures["write"] + figures["read"] + figures["redis"]
    return figures


def reset_output(url: str, prefix: str) -> None:
    """A clean slate for the next run: no output rows, no cache entries, fresh statistics."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute(f"TRUNCATE {', '.join(OUTPUT_TABLES)}")
        conn.execute("ANALYZE")
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{prefix}*", count=5000):
        client.delete(key)
    client.close()


def bench(users: int, shard_counts: list[int], executor: str) -> list[Run]:
    """Each shard count: a first night on empty output tables, then a steady-state night."""
    url = create_pg_database("overnight_bench")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    runs: list[Run] = []

    def measure_floor(run: Run) -> None:
        run.floor = floor(url, prefix, run.correlation_id)

    try:
        migrate(url)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", SEED, url, str(users), DAY.isoformat()], check=True)
        print(f"  seeded {users:,} NYSE users in {time.perf_counter() - started:.1f} s")
        for i, shards in enumerate(shard_counts):
            if i:
                reset_output(url, prefix)
            nights = two_nights(
                url,
                lambda shards=shards: run_partition(url, prefix, shards, executor),  # type: ignore[misc]
                None if i else measure_floor,
            )
            runs += nights
            for run in nights:
                print(describe(run), flush=True)
                if run.floor:
                    f = run.floor
                    print(
                        f"  I/O floor {f['total']:.1f} s (COPY of the output {f['write']:.1f} s, "
                        f"inputs {f['read']:.1f} s, Redis {f['redis']:.1f} s): "
                        f"pipeline ÷ floor = {run.wall / f['total']:.2f}×",
                        flush=True,
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


def sized(users: int, ok: bool) -> str:
    """A verdict from 10,000 users up; below, a run's fixed costs dominate: information only."""
    return verdict(ok) if users >= 10_000 else "info"


def one_size(users: int, shards: list[int], executor: str) -> list[Run]:
    """A process per size: its peak RSS and its settings (which Dagster's forkserver keeps for
    the life of the process that started it) are that size's alone."""
    return child_runs(
        [
            *(sys.executable, __file__, "--one-size", str(users)),
            *("--shards", *map(str, shards), "--executor", executor),
        ]
    )


def cpu_line(users: int, run: Run, target: bool = True) -> None:
    cpu = run.cpu_per_user()
    where = f"{run.tree} tree, {run.night} night, {run.shards} shard(s), {users:,} users"
    if cpu is None:
        print(f"info: CPU per user not measured ({where}): the server's processes are not visible")
        return
    total = sum(cpu)
    print(
        f"{sized(users, total <= CPU_PER_USER) if target else 'info'}: CPU per user ({where}): "
        f"Python {cpu[0] * 1e6:,.0f} µs + PostgreSQL {cpu[1] * 1e6:,.0f} µs = "
        f"{total * 1e6:,.0f} µs" + (f" (target ≤ {CPU_PER_USER * 1e6:,.0f} µs)" if target else "")
    )
    if run.other_db_cpu or run.unattributed_cpu >= 0.05:
        print(
            f"note: other databases' backends used {run.other_db_cpu:.1f} CPU-s during that run"
            " (taken out of PostgreSQL's figure), and backends that exited unseen "
            f"{run.unattributed_cpu:.1f} CPU-s (left in it): the server was shared"
        )


def fastest(runs: list[Run], night: str) -> Run:
    """The night's run of the shard count that took the least wall (the first on a tie):
    the configuration an operator would choose for this size on this machine."""
    return min((r for r in runs if r.night == night), key=lambda r: r.wall)


def verdicts(users: int, runs: list[Run], baseline: list[Run]) -> None:
    first, steady = runs[0], runs[1]  # the first shard count's two nights
    ratio = first.wall / first.floor["total"]
    print(
        f"{sized(users, ratio <= RATIO_TARGET)}: pipeline ÷ I/O floor at {users:,} users "
        f"{ratio:.2f}× on the first night (target ≤ {RATIO_TARGET}×); steady night "
        f"{steady.wall / first.floor['total']:.2f}×"
    )
    worst = max(r.peak_rss_mb for r in runs)
    print(
        f"{verdict(worst <= RSS_LIMIT_MB)}: peak memory per process at {users:,} users "
        f"{worst:,.0f} MB (target ≤ {RSS_LIMIT_MB:,.0f} MB)"
    )
    best = {night: fastest(runs, night) for night in ("steady", "first")}
    if users == 100_000:
        for night, limit in (("steady", WALL_100K), ("first", WALL_100K_FIRST)):
            run = best[night]
            print(
                f"{verdict(run.wall <= limit)}: 100,000 users, {night} night, in "
                f"{run.wall:.1f} s with {run.shards} shard(s) (target ≤ {limit:.0f} s)"
            )
    cpu_line(users, steady)
    for r in runs[2:]:
        if r.night == "steady":
            print(
                f"info: {r.shards} shards ({r.executor}) at {users:,} users, steady night: "
                f"{r.wall:.1f} s, speed-up {steady.wall / r.wall:.2f}× over {steady.shards}"
            )
    for old in baseline:
        new = best[old.night]
        print(
            f"{sized(users, new.wall / old.wall <= BASELINE_RATIO)}: new ÷ {old.tree} wall at "
            f"{users:,} users, {new.night} night: {new.wall:.1f} s ({new.shards} shard(s)) ÷ "
            f"{old.wall:.1f} s = {new.wall / old.wall:.2f} (target ≤ {BASELINE_RATIO})"
        )
    if baseline:
        cpu_line(users, baseline[-1], target=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--with-100k", action="store_true", help="also run 100,000 users")
    parser.add_argument("--shards", type=int, nargs="+", default=[1])
    parser.add_argument("--executor", default="multiprocess", choices=["multiprocess", "celery"])
    parser.add_argument(
        "--baseline", default="b6acf1f", help="revision run side by side (a git worktree)"
    )
    parser.add_argument("--no-baseline", action="store_true", help="no side-by-side run")
    parser.add_argument("--one-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_size:
        runs = bench(args.one_size, args.shards, args.executor)
        print(RESULT + json.dumps([r.to_json() for r in runs]))
        return
    sizes = list(args.users) + ([100_000] if args.with_100k else [])
    results: dict[int, list[Run]] = {}
    baselines: dict[int, list[Run]] = {u: [] for u in sizes}
    load = os.getloadavg()[0]
    with nullcontext(None) if args.no_baseline else worktree(args.baseline) as tree:
        for users in sizes:
            print(f"pipeline, {users:,} users:", flush=True)
            results[users] = one_size(users, args.shards, args.executor)
            if tree is not None:
                # One after the other, never side by side: each has the two cores to itself.
                print(f"baseline {args.baseline} (its own tree), {users:,} users:", flush=True)
                baselines[users] = run_baseline(tree, args.baseline, users)
                for run in baselines[users]:
                    print(describe(run), flush=True)
    table([r for u in sizes for r in results[u] + baselines[u]])
    print(
        f"\ninfo: load average (1 min) {load:.1f} at the start, {os.getloadavg()[0]:.1f} at the "
        f"end, {os.cpu_count()} cores: another load on the machine moves walls more than CPU"
    )
    for users in sizes:
        verdicts(users, results[users], baselines[users])
    per_user = {u: runs[1].wall / runs[1].users for u, runs in results.items()}
    if len(per_user) > 1:
        # The two largest sizes: at 1,000 users Dagster's fixed cost per run dominates.
        small, large = sorted(per_user)[-2:]
        growth = per_user[large] / per_user[small]
        print(
            f"{verdict(growth <= 1.25)}: cost linear in users (steady night): "
            f"{per_user[small] * 1e6:,.0f} µs/user at {small:,}, "
            f"{per_user[large] * 1e6:,.0f} at {large:,} ({growth:.2f}×, ≤ 1.25×)"
        )


if __name__ == "__main__":
    main()
