"""Time `storage.batches.load_batch` on PostgreSQL: 1,000-user batches of a seeded database.

    .venv/bin/python bench/load_batch_bench.py                 # seeds 10,000 users, then drops
    .venv/bin/python bench/load_batch_bench.py --url URL       # an already seeded database

Every batch of the database's active users is loaded `--rounds` times on one connection (so
that a driver which prepares statements after a few executions does so, as in a night's
run), the garbage collector set as in the shard step (`deferred_collection`); prints the
median seconds per batch (wall), the Python CPU of the loads (this thread's, `thread_time`,
in µs a user: the best round) and the partition-wide reads once per round.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from datetime import date

from sqlalchemy import select

from overnight_pipeline.steps.collection import deferred_collection
from overnight_pipeline.storage.batches import (
    ensure_statistics,
    load_batch,
    load_market_snapshot,
    partition_currencies,
    partition_instruments,
)
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import users_table
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

DAY = date(2026, 11, 27)
BATCH = 1000


def bench(url: str, rounds: int) -> None:
    engine = make_engine(url)
    with engine.begin() as conn:
        ensure_statistics(conn)
    with engine.connect() as conn:
        u = users_table.c
        users = sorted(conn.scalars(select(u.id).where(u.active.is_(True))))
        batches = [users[i : i + BATCH] for i in range(0, len(users), BATCH)]
        held = partition_instruments(conn, users)
        snapshot = load_market_snapshot(conn, [i for i, _ in held.values()], day=DAY)
        per_batch: list[float] = []
        partition: list[float] = []
        cpu: list[float] = []
        for _ in range(rounds):
            started = time.perf_counter()
            partition_instruments(conn, users)
            partition_currencies(conn, users)
            partition.append(time.perf_counter() - started)
            spent = 0.0
            with deferred_collection():
                for ids in batches:
                    started, thread = time.perf_counter(), time.thread_time()
                    load_batch(conn, ids, snapshot=snapshot)
                    spent += time.thread_time() - thread
                    per_batch.append(time.perf_counter() - started)
            cpu.append(spent / len(users) * 1e6)
        conn.rollback()
    engine.dispose()
    print(
        f"{len(users):,} users, {len(batches)} batches × {rounds} rounds: load_batch median"
        f" {statistics.median(per_batch) * 1000:.1f} ms/batch (min {min(per_batch) * 1000:.1f},"
        f" max {max(per_batch) * 1000:.1f}), Python CPU {min(cpu):.1f} µs a user (rounds:"
        f" {', '.join(f'{c:.1f}' for c in cpu)}); partition_instruments + partition_currencies"
        f" median {statistics.median(partition) * 1000:.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an already seeded PostgreSQL database")
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if args.url:
        bench(args.url, args.rounds)
        return
    url = create_pg_database("overnight_bench")
    try:
        migrate(url)
        env = {"DATABASE_URL": url, "PATH": "/usr/bin:/bin"}
        cli = [sys.executable, "-m", "overnight_pipeline.cli", "seed", "--users", str(args.users)]
        subprocess.run(cli, check=True, env=env)
        bench(url, args.rounds)
    finally:
        drop_pg_database(url)


if __name__ == "__main__":
    main()
