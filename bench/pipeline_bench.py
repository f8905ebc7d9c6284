"""Benchmark: one market-date partition end to end through Dagster, PostgreSQL and Redis.

    .venv/bin/python bench/pipeline_bench.py [--users 1000 10000] [--with-100k]

For each size, a throwaway PostgreSQL database is seeded (in a child process, so that its
memory is not counted) with users who all hold NYSE assets, then the partition
`DAY|NYSE` is materialised with `execute_in_process` (in-process executor, ephemeral
instance) and the Redis cache warmed under a scratch prefix. Prints per-asset seconds,
users/s and this process's peak RSS. Results are recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
import uuid
from datetime import date

import redis
from dagster import DagsterInstance

from overnight_pipeline.defs import OVERNIGHT_JOB, build_definitions
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline_tests.conftest import create_pg_database, drop_pg_database

DAY = date(2026, 11, 27)
REDIS_URL = "redis://127.0.0.1:6379/0"
ASSETS = (
    "exchange_rates",
    "asset_prices",
    "asset_fundamentals",
    "asset_scores",
    "recommendations",
    "recommendation_cache",
)

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


def run(users: int) -> dict[str, float]:
    url = create_pg_database("overnight_bench")
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    client = redis.Redis.from_url(REDIS_URL)
    try:
        migrate(url)
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", SEED, url, str(users), DAY.isoformat()], check=True)
        print(f"  seeded {users:,} NYSE users in {time.perf_counter() - started:.1f} s")
        settings = load_settings(database_url=url, redis_url=REDIS_URL, cache_prefix=prefix)
        defs = build_definitions(settings, env_vars=False)
        job = defs.resolve_job_def(OVERNIGHT_JOB)
        with DagsterInstance.ephemeral() as instance:
            started = time.perf_counter()
            result = job.execute_in_process(
                instance=instance,
                partition_key=partition_key("NYSE", DAY),
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            wall = time.perf_counter() - started
        assert result.success, "the benchmark run failed"
        meta = {
            ev.asset_key.to_user_string(): ev.materialization.metadata
            for ev in result.get_asset_materialization_events()
        }
        active = meta["asset_scores"]["users_total"].value  # the seed makes 3 % inactive
        done = meta["recommendations"]["users_succeeded"].value
        assert done == active, f"{done} of {active} users completed"
        figures = {name: float(meta[name]["seconds"].value) for name in ASSETS}
        figures["processed"] = done
        figures["wall"] = wall
        figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return figures
    finally:
        for key in client.scan_iter(f"{prefix}*", count=5000):
            client.delete(key)
        client.close()
        make_engine(url).dispose()
        drop_pg_database(url)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--with-100k", action="store_true", help="also run 100,000 users")
    args = parser.parse_args()
    sizes = list(args.users) + ([100_000] if args.with_100k else [])
    rows = []
    for users in sizes:
        print(f"pipeline, {users:,} users:")
        figures = run(users)
        rows.append((users, figures))
        steps = ", ".join(f"{name} {figures[name]:.2f}" for name in ASSETS)
        print(
            f"  through Dagster: {figures['processed']:,.0f} active users in {figures['wall']:.1f} s"
            f" ({figures['processed'] / figures['wall']:,.0f} users/s); per asset (s): {steps}; peak RSS {figures['peak_rss_mb']:,.0f} MB"
        )
    print("\n| users | wall s | users/s | " + " | ".join(ASSETS) + " | peak RSS MB |")
    print("| ---: " * (len(ASSETS) + 4) + "|")
    for _users, f in rows:
        print(
            f"| {f['processed']:,.0f} | {f['wall']:.1f} | {f['processed'] / f['wall']:,.0f} | "
            + " | ".join(f"{f[a]:.2f}" for a in ASSETS)
            + f" | {f['peak_rss_mb']:,.0f} |"
        )


if __name__ == "__main__":
    main()
