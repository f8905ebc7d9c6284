"""Benchmark: the Python CPU of the shard step's batch computation, per user.

    .venv/bin/python bench/batch_cpu_bench.py [--users 10000] [--rounds 3] [--url URL]
                                              [--keep] [--profile]

Seeds `--users` NYSE users in a throwaway PostgreSQL database with `DAY`'s market data
stored (as the calculation step finds it: `support/priced.priced_nyse_engine`), prepares a
calculation as the shard step does, loads every batch (1,000 users) once, then times
`process_batch` on the loaded batches with `time.process_time` (this process's CPU, so the
figure does not depend on what else runs on the machine), the garbage collector set as in the
shard step (`deferred_collection`). Nothing is written. Each round's total and the share of
each function `process_batch` calls are printed in µs a user; the best round is the figure.

Every round's outputs are hashed (the score, asset-X, event and recommendation rows' COPY
lines or parameter tuples, the criteria snapshots and the cache entries, with `now` fixed):
the digest printed must not change when the code is made faster.

`--url` reuses a database seeded by an earlier `--keep` run (it is then not dropped).
`--profile` runs one more round under cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import hashlib
import pickle
import pstats
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from overnight_pipeline.storage.db import make_engine
from overnight_pipeline_tests.support.priced import DAY, MARKETS, priced_nyse_engine

FIXED_NOW = datetime(2026, 11, 28, 3, 0, 0, 123456, tzinfo=UTC)
# What process_batch calls, timed separately (names in steps.batch_results; a name it
# does not have is skipped, so that the same bench times an older tree). `_Users.valued`
# includes `cache_documents`, which it calls (through `_recommendation_row`).
TIMED = (
    "_rate_failures",
    "score_batch",
    "recommend_batch",
    "score_json",
    "criteria_snapshots",
    "inputs_snapshots",
    "capture_json",
    "_score_rows",
    "_Users.valued",
    "cache_documents",
    "user_score_rows",
    "calculation_asset_rows",
    "event_rows",
    "batch_event_rows",
    "recommendation_rows",
    "_cache_entry",
)


class _FixedDatetime(datetime):
    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return FIXED_NOW


def _timer(spent: dict[str, float], name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    clock = time.process_time

    def timed(*args: Any, **kwargs: Any) -> Any:
        t = clock()
        try:
            return fn(*args, **kwargs)
        finally:
            spent[name] += clock() - t

    return timed


def _digest(results: list[Any]) -> str:
    """A hash of everything the batches would write (the write closures' prepared rows),
    and one per part (table, criteria snapshots, cache entries, counts) after it."""
    parts: dict[str, Any] = {}

    def part(name: str) -> Any:
        return parts.setdefault(name, hashlib.blake2b(digest_size=4))

    for result in results:
        write = result.write
        cells = dict(
            zip(
                write.__code__.co_freevars,
                (c.cell_contents for c in write.__closure__),
                strict=True,
            )
        )
        prepared = [cells["scores"], *cells["rows"], cells["recommendations"]]
        for rows in prepared:
            h = part(rows.table.name)
            h.update(repr(rows.columns).encode())
            if rows.binary is not None:
                for row in rows.binary:
                    h.update(row)
            elif rows.lines is not None:
                for line in rows.lines:
                    h.update(line.encode())
            else:
                h.update(repr(rows.rows).encode())
        part("criteria").update(repr(sorted(cells["criteria_payloads"].items())).encode())
        part("cache").update(repr(result.cache_entries).encode())
        part("counts").update(
            repr(
                (
                    result.succeeded,
                    result.failed,
                    result.assets_scored,
                    result.recommendations,
                    result.unallocated_users,
                    result.failures,
                )
            ).encode()
        )
    whole = hashlib.blake2b(digest_size=16)
    for name, h in parts.items():
        whole.update(name.encode() + h.digest())
    return (
        whole.hexdigest() + " (" + " ".join(f"{k} {h.hexdigest()}" for k, h in parts.items()) + ")"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--url", help="a database seeded by an earlier --keep run")
    parser.add_argument("--keep", action="store_true", help="do not drop the database")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--batches",
        type=Path,
        help="a pickle of the loaded batches: read if it exists, else written",
    )
    args = parser.parse_args()

    engines = None
    if args.batches is not None and args.batches.exists():
        with args.batches.open("rb") as f:
            run(None, args, pickle.load(f))
        return
    if args.url:
        engine = make_engine(args.url)
    else:
        t = time.perf_counter()
        engines = priced_nyse_engine("batch_cpu_bench", users=args.users, seed_value=7)
        engine = next(engines)
        print(f"seeded {args.users} users in {time.perf_counter() - t:.1f} s: {engine.url}")
    try:
        run(engine, args)
    finally:
        if engines is not None and not args.keep:
            next(engines, None)  # the fixture body's end: drops the database
        elif engines is not None:
            print(f"kept: --url {engine.url.render_as_string(hide_password=False)}")


def load(engine: Any) -> tuple[Any, list[tuple[Any, Any]]]:
    """The calculation of the seeded partition and every batch of it, loaded."""
    from overnight_pipeline.core.chunks import chunks
    from overnight_pipeline.steps import batch_results, calculation
    from overnight_pipeline.storage.batches import load_batch
    from overnight_pipeline.storage.snapshot_reads import snapshot_reads

    cid = uuid.UUID(int=25)
    calculated_at = datetime(2026, 11, 28, 2, 0, tzinfo=UTC)
    work = calculation._prepare(
        engine,
        market="NYSE",
        day=DAY,
        markets=MARKETS,
        correlation_id=cid,
        calculated_at=calculated_at,
        shard=0,
        shards=1,
        only=None,
    )
    calc = batch_results.Calculation(
        dialect=engine.dialect.name,
        market="NYSE",
        day=DAY,
        correlation_id=cid,
        calculated_at=calculated_at,
        run_id="batch-cpu-bench",
        fx=work.fx,
        snapshot=work.snapshot_key,
        positions=work.positions,
    )
    batches = list(chunks(work.users, 1000))
    t = time.perf_counter()
    loaded = []
    for chunk in batches:
        with snapshot_reads(engine) as conn:
            loaded.append((chunk, load_batch(conn, chunk, snapshot=work.snapshot)))
    print(
        f"{len(work.users)} users, {len(batches)} batches loaded in {time.perf_counter() - t:.1f} s"
    )
    return calc, loaded


def run(engine: Any, args: argparse.Namespace, found: Any = None) -> None:
    from overnight_pipeline.steps import batch_results
    from overnight_pipeline.steps.collection import deferred_collection

    calc, loaded = found if found is not None else load(engine)
    if found is None and args.batches is not None:
        with args.batches.open("wb") as f:
            pickle.dump((calc, loaded), f)
    n_users = sum(len(chunk) for chunk, _ in loaded)

    spent: dict[str, float] = defaultdict(float)
    batch_results.datetime = _FixedDatetime  # type: ignore[misc,attr-defined]
    for name in TIMED:
        if "." in name:
            cls_name, attr = name.split(".")
            cls = getattr(batch_results, cls_name)
            setattr(cls, attr, _timer(spent, name, getattr(cls, attr)))
        elif hasattr(batch_results, name):
            setattr(batch_results, name, _timer(spent, name, getattr(batch_results, name)))

    def one_round() -> tuple[float, str]:
        spent.clear()
        with deferred_collection():
            t0 = time.process_time()
            results = [batch_results.process_batch(b, chunk, calc) for chunk, b in loaded]
            cpu = time.process_time() - t0
        return cpu, _digest(results)

    best: float | None = None
    least: dict[str, float] = {}
    for r in range(args.rounds):
        cpu, digest = one_round()
        us = cpu / n_users * 1e6
        parts = ", ".join(
            f"{k} {v / n_users * 1e6:.0f}" for k, v in sorted(spent.items(), key=lambda kv: -kv[1])
        )
        print(f"round {r + 1}: {us:.0f} µs a user  ({parts})")
        print(f"  digest {digest}")
        best = us if best is None else min(best, us)
        for k, v in spent.items():
            least[k] = min(least.get(k, v), v)
    assert best is not None
    print(f"best: {best:.0f} µs a user of Python CPU (process_batch, {n_users} users)")
    # Each function's least over the rounds (one decimal: the small ones are a few µs).
    print(
        "least a function: "
        + ", ".join(
            f"{k} {v / n_users * 1e6:.1f}" for k, v in sorted(least.items(), key=lambda kv: -kv[1])
        )
    )
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        one_round()
        profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(40)


if __name__ == "__main__":
    main()
