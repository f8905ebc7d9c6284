"""Time the real `overnight load` of a big file (issue 23): wall time and peak RSS.

    .venv/bin/python bench/load_bench.py [--users 100000] [--tree DIR ...]

Writes two files of `--users` synthetic users (overnight_pipeline_tests/support/load_files:
≈ 85 MB at 100,000 users; the second changes about half of them), then for each source
tree (default: this checkout; e.g. a `git worktree` of an older commit to compare), each
on a throwaway PostgreSQL database of its own, runs `overnight load` as a subprocess three
times: the first file into the empty database, the same file again (nothing changes), the
second file; the trees take turns at each step. Each run's wall time and peak resident
memory (the child's own rusage, `os.wait4`), the lines it printed on stderr, and the rows
in the tables afterwards.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import text

from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline_tests.support import load_files
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

HERE = Path(__file__).resolve().parent.parent
TABLES = ("users", "asset_classes", "holdings", "criteria_versions", "user_changes")
COMMAND = "import sys; from overnight_pipeline.cli import main; sys.exit(main())"


def run_load(tree: Path, path: Path, url: str) -> tuple[int, float, float, list[str], str]:
    """`overnight load path` with `tree`'s code: exit code, seconds, peak RSS in MB, stderr
    lines, stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MARKET"))}
    env.update(DATABASE_URL=url, PYTHONPATH=str(tree))
    with tempfile.TemporaryFile("w+") as err, tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        child = subprocess.Popen(
            [sys.executable, "-c", COMMAND, "load", str(path)],
            cwd=tree,
            env=env,
            stdout=out,
            stderr=err,
        )
        _, status, usage = os.wait4(child.pid, 0)
        took = time.perf_counter() - started
        child.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        out.seek(0)
        # ru_maxrss is in kilobytes on Linux.
        return child.returncode, took, usage.ru_maxrss / 1024, err.read().splitlines(), out.read()


def counts(url: str) -> str:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return ", ".join(
                f"{conn.execute(text(f'SELECT count(*) FROM {t}')).scalar_one():,} {t}"
                for t in TABLES
            )
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--tree", type=Path, action="append", help="source tree (repeatable)")
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    trees = [t.resolve() for t in args.tree or [HERE]]
    with tempfile.TemporaryDirectory(prefix="load_bench_") as tmp:
        first = load_files.write(Path(tmp) / "users.json", args.users, args.seed)
        second = load_files.write(Path(tmp) / "users-2.json", args.users, args.seed, version=1)
        for name, path in (("first", first), ("second", second)):
            print(f"{name} file: {path.stat().st_size / 1e6:.1f} MB, {args.users:,} users")
        # One database per tree, the trees taking turns at each step: a busy moment of the
        # machine falls on both sides of a comparison.
        urls = {tree: create_pg_database("overnight_load_bench") for tree in trees}
        try:
            for tree, url in urls.items():
                migrate(url)
                revision = subprocess.run(
                    ["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                    capture_output=True,
                    text=True,
                    check=False,
                ).stdout.strip()[:70]
                print(f"tree {tree}: {revision}")
            for label, path in (
                ("into an empty database", first),
                ("the same file again", first),
                ("the second file", second),
            ):
                print(f"\n{label}:")
                for tree, url in urls.items():
                    code, took, peak, err, out = run_load(tree, path, url)
                    print(
                        f"  {tree}: exit {code}, {took:.1f} s, peak RSS {peak:,.0f} MB;"
                        f" {len(err)} stderr line(s)"
                    )
                    checked = [line for line in err if ": checked " in line][-1:]
                    for line in checked + err[-1:] if code == 0 else err[-3:]:
                        print(f"    stderr: {line[:150]}")
                    print(f"    stdout: {out.strip()[:200]}")
                    print(f"    rows: {counts(url)}")
        finally:
            for url in urls.values():
                drop_pg_database(url)


if __name__ == "__main__":
    main()
