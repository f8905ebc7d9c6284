"""Time an `overnight load` that removes 10,000 holdings, under PostgreSQL's default settings.

    .venv/bin/python bench/load_removals_bench.py [--rounds 3]

The scenario of `overnight_pipeline_tests/storage/test_load_removals.py` (issue 23), built
by `overnight_pipeline_tests/support/removals.py`: 200 users holding 55 assets each, beside
600 users the file leaves alone, written set-wise and ANALYZEd as autovacuum would; then a
file (through `load()`) in which the 200 keep 5 each.
Each round runs in its own transaction on a throwaway database and is rolled back. Prints
per round the load's seconds, and the highest plan cost among the statements it ran and
whether any would be JIT-compiled (plain EXPLAIN of each, afterwards).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from sqlalchemy import Engine, event, text

from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.loader import load
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database
from overnight_pipeline_tests.support.removals import (
    REMOVED,
    USERS,
    seed_holdings,
    selling_file,
)


def one_round(engine: Engine) -> tuple[float, int, float, int]:
    with engine.connect() as conn, conn.begin() as transaction:
        users, _, symbols = seed_holdings(conn)
        conn.execute(text("ANALYZE holdings, assets, asset_classes, users"))
        doc = parse_load_file(selling_file(users[:USERS], symbols), markets=load_markets())
        executed: list[tuple[str, Any]] = []

        def record(c, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
            # An executemany (the upserts) is one statement per row, planned alike.
            executed.append((statement, parameters[0] if executemany else parameters))

        event.listen(conn, "before_cursor_execute", record)
        started = time.perf_counter()
        load(conn, doc)
        took = time.perf_counter() - started
        event.remove(conn, "before_cursor_execute", record)
        plans = [
            conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + s, p).scalar_one()[0]
            for s, p in executed
        ]
        transaction.rollback()
    costliest = max(plan["Plan"]["Total Cost"] for plan in plans)
    return took, len(executed), costliest, sum("JIT" in plan for plan in plans)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    url = create_pg_database("overnight_bench")
    try:
        migrate(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            settings = conn.execute(
                text(
                    "SELECT current_setting('jit'), current_setting('jit_above_cost'),"
                    " current_setting('jit_optimize_above_cost')"
                )
            ).one()
        print(f"jit={settings[0]} jit_above_cost={settings[1]} jit_optimize={settings[2]}")
        seconds: list[float] = []
        for n in range(1, args.rounds + 1):
            took, statements, costliest, jit = one_round(engine)
            seconds.append(took)
            print(
                f"round {n}: load removing {REMOVED:,} holdings {took:.2f} s; {statements}"
                f" statements, highest plan cost {costliest:,.0f}, {jit} would be JIT-compiled",
                flush=True,
            )
        print(f"median {statistics.median(seconds):.2f} s over {len(seconds)} rounds")
        engine.dispose()
    finally:
        drop_pg_database(url)


if __name__ == "__main__":
    main()
