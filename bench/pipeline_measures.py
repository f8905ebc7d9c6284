"""What bench/pipeline_bench.py measures around a run, without the pipeline's code: so the same
measures run on this tree and on an older one checked out beside it (the baseline).

- CPU, split: the Python side is this process and every process under it (Dagster's forkserver
  and step processes included), the PostgreSQL side the postmaster and every process under it.
  Each side is read from /proc as the sum over the live processes of their own CPU and the CPU
  of the children they reaped (`utime + stime + cutime + cstime`): a backend or a step process
  that exits during the run is counted in its parent's `cutime`, so nothing is lost to exits.
  Backends of other databases (another user of the server) are sampled every 0.2 s and
  their CPU taken out of PostgreSQL's; what they spent after their last sample stays in
  (counted against the pipeline, never for it).
- The baseline: `python bench/pipeline_measures.py --baseline TREE USERS` runs in an older
  tree (a git worktree; PYTHONPATH set to it) that tree's own bench/pipeline_bench.py: its
  database, seed and `run_partition`, two nights as this tree's bench runs them, with the
  measures of this module. It prints the runs as a RESULT line.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import redis

RESULT = "RESULT "
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
SAMPLE_EVERY = 0.2  # seconds between two looks at the other databases' backends
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Run:
    shards: int
    executor: str
    wall: float
    users: int
    steps: dict[str, float]
    peak_rss_mb: float
    correlation_id: uuid.UUID
    python_cpu: float | None = None  # CPU seconds of the pipeline's processes
    floor: dict[str, float] = field(default_factory=dict)
    night: str = "first"  # "first": empty output tables; "steady": the same partition again
    postgres_cpu: float | None = None  # CPU seconds of the PostgreSQL server's processes
    other_db_cpu: float = 0.0  # CPU seconds of other databases' backends, taken out of it
    unattributed_cpu: float = 0.0  # exits' CPU likely theirs too, left in PostgreSQL's
    tree: str = "new"  # or the baseline's revision

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"correlation_id": str(self.correlation_id)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Run:
        known = {f.name for f in fields(cls)}  # an older tree's Run may carry other fields
        mine = {k: v for k, v in data.items() if k in known}
        return cls(**(mine | {"correlation_id": uuid.UUID(str(data["correlation_id"]))}))

    def cpu_per_user(self) -> tuple[float, float] | None:
        """(Python, PostgreSQL) CPU seconds per user, when both were measured."""
        if self.python_cpu is None or self.postgres_cpu is None or not self.users:
            return None
        return self.python_cpu / self.users, self.postgres_cpu / self.users


def describe(run: Run) -> str:
    steps = ", ".join(f"{k} {v:.2f}" for k, v in run.steps.items())
    how = "in_process" if run.shards == 1 else run.executor
    line = (
        f"  {run.shards} shard(s) ({how}), {run.night} night: {run.users:,} users in "
        f"{run.wall:.1f} s ({run.users / run.wall:,.0f} users/s); steps (s): {steps}; "
        f"peak RSS {run.peak_rss_mb:,.0f} MB"
    )
    if run.python_cpu is not None:
        line += f"; CPU s: Python {run.python_cpu:.1f}"
    if run.postgres_cpu is not None:
        line += f", PostgreSQL {run.postgres_cpu:.1f}"
    return line


def table(runs: list[Run]) -> None:
    print(
        "\n| tree | users | shards | night | wall s | users/s | µs/user | CPU µs/user: Python |"
        " PostgreSQL | total | floor s | ÷ floor | peak RSS MB |"
    )
    print(
        "| --- | ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    )
    for r in runs:
        floor_s = r.floor.get("total")
        cpu = r.cpu_per_user()
        py, pg = ("", "") if cpu is None else (f"{cpu[0] * 1e6:,.0f}", f"{cpu[1] * 1e6:,.0f}")
        total = "" if cpu is None else f"{sum(cpu) * 1e6:,.0f}"
        print(
            f"| {r.tree} | {r.users:,} | {r.shards} | {r.night} | {r.wall:.1f} | "
            f"{r.users / r.wall:,.0f} | {r.wall / r.users * 1e6:,.0f} | {py} | {pg} | {total} | "
            f"{'' if floor_s is None else f'{floor_s:.1f}'} | "
            f"{'' if floor_s is None else f'{r.wall / floor_s:.2f}×'} | {r.peak_rss_mb:,.0f} |"
        )


def libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _stat(pid: int) -> tuple[float, float] | None:
    """(own CPU, reaped children's CPU) of a process in seconds; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields[0] is the 3rd field, the state
    utime, stime, cutime, cstime = (int(v) for v in fields[11:15])
    return (utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def tree_cpu(root: int) -> float:
    """CPU seconds of a process, of the processes under it and of those they reaped."""
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        stat = _stat(pid)
        if stat is not None:
            total += stat[0] + stat[1]
            todo += _children(pid)
    return total


def _database_of(pid: int) -> str | None:
    """The database a backend serves, from its process title (None: not a client backend)."""
    try:
        title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return None
    title = title.strip().removeprefix("postgres: ")
    head, sep, rest = title.partition(": ")
    if sep and " " not in head:  # the cluster name, as in "15/main: "
        title = rest
    words = title.split()  # "user database host(port) state" for a client backend
    if len(words) >= 3 and ("(" in words[2] or words[2] == "[local]"):
        return words[1]
    return None


class CpuMeter:
    """CPU seconds spent by the Python and PostgreSQL sides between enter and exit."""

    def __init__(self, database_url: str) -> None:
        self.database = urlsplit(libpq(database_url)).path.lstrip("/")
        with psycopg.connect(libpq(database_url)) as conn:  # its backend's parent, while alive
            backend = conn.execute("SELECT pg_backend_pid()").fetchone()
            try:
                text = Path(f"/proc/{backend[0] if backend else 0}/stat").read_text()
                self.postmaster: int | None = int(text[text.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                self.postmaster = None  # a server on another machine or out of sight
        self.python = self.postgres = self.other_db = 0.0
        self._stop = threading.Event()
        self._others: dict[int, tuple[float, float]] = {}  # pid: (CPU at start, CPU last seen)
        self._alive: dict[int, str] = {}  # pid: database, at the last look
        self._reaped = self.unattributed = 0.0
        self._sampler_cpu = 0.0

    def _look(self, start: bool = False) -> None:
        """One look at the server's client backends: the CPU of other databases' so far, and
        what the processes reaped since the last look spent beyond what was seen of them."""
        assert self.postmaster
        reaped = _stat(self.postmaster)
        alive: dict[int, str] = {}
        for pid in _children(self.postmaster):
            database, stat = _database_of(pid), _stat(pid)
            if database is None or stat is None:
                continue
            alive[pid] = database
            if database != self.database:
                first = self._others.get(pid, (stat[0] if start else 0.0, 0.0))[0]
                self._others[pid] = (first, stat[0])
        gone = self._alive.keys() - alive.keys()
        if reaped and not start and all(self._alive[p] != self.database for p in gone):
            # None of the bench's backends exited: what the exits spent unseen is likely other
            # databases' (their last moments, or whole short connections). It stays counted.
            seen = sum(self._others[p][1] for p in gone if p in self._others)
            self.unattributed += max(0.0, reaped[1] - self._reaped - seen)
        self._alive = alive
        self._reaped = reaped[1] if reaped else self._reaped

    def _sample(self) -> None:
        while not self._stop.wait(SAMPLE_EVERY):
            self._look()
        self._sampler_cpu = time.thread_time()

    def __enter__(self) -> CpuMeter:
        self._python = tree_cpu(os.getpid())
        if self.postmaster:
            self._look(start=True)
            self._postgres = tree_cpu(self.postmaster)
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.postmaster:
            self._stop.set()
            self._thread.join()
            self._look()
            self.other_db = sum(last - first for first, last in self._others.values())
            self.postgres = tree_cpu(self.postmaster) - self._postgres - self.other_db
        self.python = tree_cpu(os.getpid()) - self._python - self._sampler_cpu

    def record(self, run: Run) -> Run:
        run.python_cpu = self.python
        if self.postmaster:
            run.postgres_cpu, run.other_db_cpu = self.postgres, self.other_db
            run.unattributed_cpu = self.unattributed
        return run


def analyse(url: str) -> None:
    """What autovacuum does after a night's writes (it is off on this server)."""
    with psycopg.connect(libpq(url), autocommit=True) as conn:
        conn.execute("ANALYZE")


def two_nights(
    url: str, run: Callable[[], Run], after_first: Callable[[Run], None] | None = None
) -> list[Run]:
    """The partition on empty output tables (first night), then again (steady-state night:
    the current scores in place, the tables analysed: a new calculation replaces them)."""
    with CpuMeter(url) as meter:
        first = run()
    meter.record(first)
    if after_first:
        after_first(first)
    analyse(url)
    with CpuMeter(url) as meter:
        steady = run()
    meter.record(steady)
    steady.night = "steady"
    return [first, steady]


@contextmanager
def worktree(revision: str) -> Iterator[Path]:
    """A checkout of `revision` beside this one, removed afterwards."""
    home = Path(tempfile.mkdtemp(prefix="bench-baseline-"))
    tree = home / revision.replace("/", "_")
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), revision],
        check=True,
        capture_output=True,
    )
    try:
        yield tree
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(home, ignore_errors=True)


def child_runs(command: list[str], **kwargs: Any) -> list[Run]:
    """Run `command` (a bench process), echo its output and return the runs of its RESULT
    line."""
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True, **kwargs)
    runs: list[Run] = []
    for line in child.stdout.splitlines():
        if line.startswith(RESULT):
            runs = [Run.from_json(r) for r in json.loads(line.removeprefix(RESULT))]
        else:
            print(line, flush=True)
    return runs


def run_baseline(tree: Path, label: str, users: int) -> list[Run]:
    """Two nights of `users` through the pipeline of `tree`, in a process of its own."""
    runs = child_runs(
        [sys.executable, __file__, "--baseline", str(tree), str(users)],
        cwd=tree,
        env=os.environ | {"PYTHONPATH": f"{tree}{os.pathsep}{tree / 'bench'}"},
    )
    for r in runs:
        r.tree = label
    return runs


def _baseline_main(tree: Path, users: int) -> None:
    """In the baseline's process: its own bench module, database, seed and pipeline."""
    sys.path[:0] = [str(tree), str(tree / "bench")]
    sys.path.remove(str(Path(__file__).resolve().parent))
    old = importlib.import_module("pipeline_bench")
    pipeline = importlib.import_module("overnight_pipeline")
    assert Path(pipeline.__file__ or "").is_relative_to(tree), pipeline.__file__
    url = old.create_pg_database("overnight_bench_base")
    prefix = f"bench-base-{uuid.uuid4().hex[:8]}:"
    try:
        old.migrate(url)
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", old.SEED, url, str(users), old.DAY.isoformat()], check=True
        )
        print(f"  seeded {users:,} NYSE users in {time.perf_counter() - started:.1f} s")

        def run() -> Run:
            theirs = old.run_partition(url, prefix, 1, "multiprocess")
            return Run.from_json(asdict(theirs) | {"floor": {}})

        runs = two_nights(url, run)
    finally:
        client = redis.Redis.from_url(old.REDIS_URL)
        for key in client.scan_iter(f"{prefix}*", count=5000):
            client.delete(key)
        client.close()
        old.make_engine(url).dispose()
        old.drop_pg_database(url)
    print(RESULT + json.dumps([r.to_json() for r in runs]))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--baseline"]:
        _baseline_main(Path(sys.argv[2]).resolve(), int(sys.argv[3]))
