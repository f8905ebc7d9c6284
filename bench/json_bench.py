"""Time the event documents of the hot path: `capture_json` and `score_json` per 1,000 users.

    .venv/bin/python bench/json_bench.py [--users 10000] [--rounds 3]

The synthetic batches of `bench/core_bench.py` (30 holdings, 3-6 classes, 5-15 rules per
user) are scored once (not timed); then both documents are built for every batch, on one
core, `--rounds` times; prints the median time per 1,000 users of each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))

from core_bench import DAY, batches, market_data

from overnight_pipeline.core.batch import score_batch
from overnight_pipeline.core.captured_writer import capture_json
from overnight_pipeline.core.scored import score_json
from overnight_pipeline.core.vocabulary import METRICS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    data = market_data()
    table, fx = data[0], data[5]
    # `capture_json` reads the fundamentals as the pipeline loads them: a frame by asset id.
    frame = pd.DataFrame(table.exact[:-1], index=table.index, columns=list(METRICS), dtype=object)
    prepared = []
    for batch, _ in batches(args.users, 1000, 30, data):
        batch = batch.__class__(
            users=batch.users,
            classes=batch.classes,
            holdings=batch.holdings,
            rules=batch.rules,
            fundamentals=frame,
        )
        versions = dict.fromkeys(batch.users["user_id"].tolist(), 1)
        markets = ["NYSE"] * len(batch.holdings)
        prepared.append((batch, score_batch(batch.holdings, batch.rules, table), versions, markets))
    capture_s: list[float] = []
    score_s: list[float] = []
    for _ in range(args.rounds):
        for batch, scored, versions, markets in prepared:
            started = time.perf_counter()
            capture_json(
                batch,
                fx,
                market="NYSE",
                market_date=DAY,
                criteria_versions=versions,
                holding_markets=markets,
            )
            capture_s.append(time.perf_counter() - started)
            started = time.perf_counter()
            score_json(scored, versions)
            score_s.append(time.perf_counter() - started)
    print(
        f"{args.users:,} users × {args.rounds} rounds, per 1,000 users (median):"
        f" capture_json {statistics.median(capture_s) * 1000:.1f} ms,"
        f" score_json {statistics.median(score_s) * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
