"""Benchmark: `overnight seed` of N users on a throwaway PostgreSQL database.

    .venv/bin/python bench/seed_bench.py [--users 100000] [--admin-url URL]

Prints rows written and wall time; the result is recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import time
import uuid

from sqlalchemy import text
from sqlalchemy.engine import make_url

from overnight_pipeline.seed import seed
from overnight_pipeline.storage.db import make_engine, migrate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--admin-url", default="postgresql+psycopg://root@127.0.0.1:5432/postgres")
    args = parser.parse_args()

    name = f"overnight_bench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(args.admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(args.admin_url).set(database=name).render_as_string(hide_password=False)
    try:
        migrate(url)
        engine = make_engine(url)
        for attempt in ("fresh database", "re-seed (replaces the same users)"):
            started = time.perf_counter()
            with engine.begin() as conn:
                report = seed(conn, users=args.users, seed=args.seed)
            elapsed = time.perf_counter() - started
            print(
                f"seed {args.users:,} users, {attempt}: {elapsed:.1f} s"
                f" ({report.holdings:,} holdings, {report.asset_classes:,} classes,"
                f" {report.criteria_rules:,} rules; {args.users / elapsed:,.0f} users/s)"
            )
        engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
