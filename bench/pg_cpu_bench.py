"""Benchmark: PostgreSQL's CPU of a night, per kind of statement (issue 25).

    .venv/bin/python bench/pg_cpu_bench.py [--users 10000] [--nights 3] [--url URL] [--keep]

A throwaway database is seeded with `--users` NYSE users (bench/pipeline_bench.py's seed, then
ANALYZE); the partition `DAY|NYSE` then runs `--nights` times through Dagster in this process
(one shard, `pipeline_bench.run_partition`): a first night on empty output tables, then steady
nights (the same partition as a new calculation, the tables analysed before each). `--url`
reuses a database seeded so (its output tables are emptied first); `--keep` leaves the
created one in place and prints its URL.

Every statement the pipeline sends goes through a psycopg cursor (`execute`, `executemany`,
`copy`) or a connection's `commit`/`rollback`; those are wrapped to read the CPU of the
statement's own backend from `/proc/<backend pid>/schedstat` (nanoseconds on the CPU) before
and after. The server has no pg_stat_statements (not in `shared_preload_libraries`), and a
backend serves one connection at a time, so the difference is that statement's CPU, whatever
else runs on the other connections. Each statement is filed under:
- where: the innermost frame of the pipeline's code that sent it (`overnight_pipeline.`,
  leaving out `storage.bulk`, `storage.db` and `storage.dialect`), as module.function;
- what: its verb and first table (`COPY calculation_events`, `INSERT user_scores`, `SELECT
  holdings`, `CREATE TEMP staged_user_scores`, `COMMIT`, …).

Printed per night: µs per user and calls of each (where, what), largest first, then the totals
per `where`; the night's whole PostgreSQL CPU (bench/pipeline_measures.py: the server's
processes, other databases' backends taken out) and the part no statement accounts for
(the server's own processes, connection starts, what runs between statements).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import psycopg
import redis
from pipeline_bench import DAY, REDIS_URL, SEED, reset_output, run_partition
from pipeline_measures import CpuMeter, Run, _children, _database_of, _stat, analyse

from overnight_pipeline.storage.db import migrate
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

SKIPPED_MODULES = (
    "overnight_pipeline.storage.bulk",
    "overnight_pipeline.storage.db",
    "overnight_pipeline.storage.dialect",
)


def backend_cpu(pid: int) -> int:
    """Nanoseconds the backend `pid` has spent on a CPU."""
    with open(f"/proc/{pid}/schedstat", "rb") as f:
        return int(f.read().split(maxsplit=1)[0])


_WORDS = re.compile(r"[A-Za-z_][A-Za-z_0-9.]*|\(")


def statement_kind(sql: Any) -> str:
    """The verb and first table of `sql`."""
    text = (
        sql
        if isinstance(sql, str)
        else str(sql.as_string(None) if hasattr(sql, "as_string") else sql)
    )
    words: list[str] = _WORDS.findall(text[:2000])
    if not words:
        return "?"
    verb = words[0].upper()
    after = {
        "SELECT": ("FROM",),
        "INSERT": ("INTO",),
        "COPY": (),
        "DELETE": ("FROM",),
        "UPDATE": (),
        "TRUNCATE": (),
        "ANALYZE": (),
        "CREATE": ("TABLE",),
        "WITH": ("FROM",),
    }.get(verb)
    if after is None:
        return verb
    rest = words[1:]
    if verb == "CREATE":
        temp = "TEMP " if any(w.upper() in ("TEMP", "TEMPORARY") for w in rest[:3]) else ""
        names = [
            w
            for w in rest
            if w.upper() not in ("TEMP", "TEMPORARY", "TABLE", "IF", "NOT", "EXISTS", "UNLOGGED")
        ]
        return f"CREATE {temp}{names[0] if names else '?'}"
    if not after:
        names = [w for w in rest if w != "(" and w.upper() not in ("TABLE", "ONLY")]
        return f"{verb} {names[0] if names else '?'}"
    for i, w in enumerate(rest):
        if w.upper() in after and i + 1 < len(rest) and rest[i + 1] != "(":
            return f"{verb} {rest[i + 1]}"
    return verb


def where_from() -> str:
    """module.function of the innermost frame of the pipeline's code on this thread's stack."""
    frame: FrameType | None = sys._getframe(2)
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        if module.startswith("overnight_pipeline.") and not module.startswith(SKIPPED_MODULES):
            return f"{module.removeprefix('overnight_pipeline.')}.{frame.f_code.co_name}"
        frame = frame.f_back
    return "(outside the pipeline)"


class Probe:
    """CPU nanoseconds of the statements' backends, per (where, what)."""

    def __init__(self) -> None:
        self.cpu: dict[tuple[str, str], int] = defaultdict(int)
        self.calls: dict[tuple[str, str], int] = defaultdict(int)
        self._lock = threading.Lock()
        self.on = False

    def add(self, key: tuple[str, str], ns: int) -> None:
        with self._lock:
            self.cpu[key] += ns
            self.calls[key] += 1

    def reset(self) -> tuple[dict[tuple[str, str], int], dict[tuple[str, str], int]]:
        with self._lock:
            out = (dict(self.cpu), dict(self.calls))
            self.cpu.clear()
            self.calls.clear()
        return out

    def measured(self, pid: int, what: str) -> Callable[[], None]:
        """A function that files the CPU `pid` spent since now under (where, `what`)."""
        where = where_from()
        try:
            start = backend_cpu(pid)
        except OSError:
            return lambda: None

        def done() -> None:
            try:
                self.add((where, what), backend_cpu(pid) - start)
            except OSError:
                pass

        return done

    def install(self) -> None:
        probe = self
        cursor, connection = psycopg.Cursor, psycopg.Connection
        execute, executemany, copy = cursor.execute, cursor.executemany, cursor.copy
        commit, rollback = connection.commit, connection.rollback

        def pid_of(cur: Any) -> int:
            return int(cur.connection.info.backend_pid)

        def wrapped_execute(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if not probe.on:
                return execute(self, query, *args, **kwargs)
            done = probe.measured(pid_of(self), statement_kind(query))
            try:
                return execute(self, query, *args, **kwargs)
            finally:
                done()

        def wrapped_executemany(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            if not probe.on:
                return executemany(self, query, *args, **kwargs)
            done = probe.measured(pid_of(self), statement_kind(query) + " (many)")
            try:
                return executemany(self, query, *args, **kwargs)
            finally:
                done()

        @contextmanager
        def wrapped_copy(self: Any, statement: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
            if not probe.on:
                with copy(self, statement, *args, **kwargs) as c:
                    yield c
                return
            done = probe.measured(pid_of(self), statement_kind(statement))
            try:
                with copy(self, statement, *args, **kwargs) as c:
                    yield c
            finally:
                done()

        def ending(original: Callable[[Any], None], label: str) -> Callable[[Any], None]:
            def wrapped(self: Any) -> None:
                if not probe.on or self.closed:
                    return original(self)
                done = probe.measured(int(self.info.backend_pid), label)
                try:
                    return original(self)
                finally:
                    done()

            return wrapped

        cursor.execute = wrapped_execute  # type: ignore[method-assign,assignment]
        cursor.executemany = wrapped_executemany  # type: ignore[method-assign,assignment]
        cursor.copy = wrapped_copy  # type: ignore[method-assign,assignment]
        connection.commit = ending(commit, "COMMIT")  # type: ignore[method-assign,assignment]
        connection.rollback = ending(rollback, "ROLLBACK")  # type: ignore[method-assign,assignment]


class Server:
    """CPU seconds of the server's processes during a night, sampled every 0.2 s: this
    database's backends (all of their CPU, in statements or not: connection starts count
    here) and the server's own processes (walwriter, checkpointer, …) by title."""

    def __init__(self, postmaster: int, database: str) -> None:
        self.postmaster, self.database = postmaster, database
        self._seen: dict[int, tuple[str, float, float]] = {}  # pid: (kind, first, last)
        self._stop = threading.Event()

    def _kind(self, pid: int) -> str | None:
        database = _database_of(pid)
        if database is not None:
            return "backends" if database == self.database else None
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return None
        kind = title.strip().rsplit(": ", 1)[-1].strip()
        return None if not kind or kind.startswith("parallel worker") else kind

    def look(self, start: bool = False) -> None:
        for pid in _children(self.postmaster):
            stat = _stat(pid)
            if stat is None:
                continue
            known = self._seen.get(pid)
            if known is None:
                kind = self._kind(pid)
                if kind is None:
                    continue
                known = (kind, stat[0] if start else 0.0, stat[0])
            self._seen[pid] = (known[0], known[1], stat[0])

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            self.look()

    def __enter__(self) -> Server:
        self.look(start=True)
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
        self.look()

    def by_kind(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for kind, first, last in self._seen.values():
            out[kind] += last - first
        return dict(out)


def seeded(users: int) -> str:
    url = create_pg_database("overnight_pgcpu")
    migrate(url)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", SEED, url, str(users), DAY.isoformat()], check=True)
    print(f"seeded {users:,} NYSE users in {time.perf_counter() - started:.1f} s", flush=True)
    return url


def report(
    title: str,
    run: Run,
    meter: CpuMeter,
    server: dict[str, float],
    cpu: dict[tuple[str, str], int],
    calls: dict[tuple[str, str], int],
) -> None:
    users = run.users or 1
    total_ns = sum(cpu.values())
    print(f"\n{title}: {run.users:,} users, wall {run.wall:.1f} s")
    print("| where | what | calls | CPU ms | µs/user |")
    print("| --- | --- | ---: | ---: | ---: |")
    for key in sorted(cpu, key=lambda k: -cpu[k]):
        ns = cpu[key]
        if ns / users < 500:  # below 0.5 µs a user: summed in "smaller" below
            continue
        print(
            f"| {key[0]} | {key[1]} | {calls[key]:,} | {ns / 1e6:,.1f} | {ns / users / 1e3:,.1f} |"
        )
    small = sum(ns for ns in cpu.values() if ns / users < 500)
    print(f"| (smaller ones) | | | {small / 1e6:,.1f} | {small / users / 1e3:,.1f} |")
    by_where: dict[str, int] = defaultdict(int)
    for (where, _), ns in cpu.items():
        by_where[where] += ns
    print("\n| where (all its statements) | µs/user |")
    print("| --- | ---: |")
    for where, ns in sorted(by_where.items(), key=lambda kv: -kv[1]):
        if ns / users >= 500:
            print(f"| {where} | {ns / users / 1e3:,.1f} |")
    pg = meter.postgres
    print(
        f"\nPostgreSQL CPU of the night (all its processes, other databases' taken out):"
        f" {pg:.2f} s = {pg / users * 1e6:,.0f} µs/user; statements {total_ns / 1e9:.2f} s ="
        f" {total_ns / users / 1e3:,.0f} µs/user; the rest (server processes, connection starts,"
        f" between statements) {(pg - total_ns / 1e9) / users * 1e6:,.0f} µs/user;"
        f" other databases' backends {meter.other_db:.1f} s taken out, exits unseen"
        f" {meter.unattributed:.1f} s left in",
        flush=True,
    )
    ours = server.pop("backends", 0.0)
    print(
        f"this database's backends (sampled): {ours / users * 1e6:,.0f} µs/user, of which outside"
        f" the statements {(ours - total_ns / 1e9) / users * 1e6:,.0f}; the server's own"
        " processes: "
        + ", ".join(f"{k} {v / users * 1e6:,.0f}" for k, v in sorted(server.items()) if v)
        + f"; not sampled (parallel workers, processes gone between two looks)"
        f" {(pg - ours - sum(server.values())) / users * 1e6:,.0f}",
        flush=True,
    )


def nights(url: str, count: int) -> None:
    prefix = f"pgcpu-{uuid.uuid4().hex[:8]}:"
    probe = Probe()
    probe.install()
    try:
        reset_output(url, prefix)
        for night in range(count):
            if night:
                analyse(url)
            probe.reset()
            probe.on = True
            with CpuMeter(url) as meter:
                assert meter.postmaster, "the server's processes are not visible"
                with Server(meter.postmaster, meter.database) as server:
                    run = run_partition(url, prefix, 1, "multiprocess")
            probe.on = False
            meter.record(run)
            cpu, calls = probe.reset()
            title = "first night" if night == 0 else f"steady night {night}"
            report(title, run, meter, server.by_kind(), cpu, calls)
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        for key in client.scan_iter(f"{prefix}*", count=5000):
            client.delete(key)
        client.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--nights", type=int, default=3, help="the first, then steady ones")
    parser.add_argument("--url", help="a database seeded by this bench (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the created database")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} at the start", flush=True)
    url = args.url or seeded(args.users)
    try:
        nights(url, args.nights)
    finally:
        if args.url is None and not args.keep:
            drop_pg_database(url)
        elif args.keep:
            print(f"kept: --url {url}")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
