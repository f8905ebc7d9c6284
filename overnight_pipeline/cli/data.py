"""The commands that put data in the database: `migrate`, `load` and `seed`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from overnight_pipeline.cli.checks import (
    INVALID,
    OK,
    SERVICE,
    check_database,
    check_markets,
    engine,
    reason,
)
from overnight_pipeline.settings import Settings, mask_url

if TYPE_CHECKING:
    from overnight_pipeline.core.load_stream import LoadStream
    from overnight_pipeline.storage.loader import LoadReport

# `overnight load` says how far it is on stderr every this many users, or seconds.
LOAD_PROGRESS_USERS = 10_000
LOAD_PROGRESS_SECONDS = 5.0


def add_migrate(sub: Any) -> None:
    p = sub.add_parser("migrate", help="apply the database migrations (DATABASE_URL)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)


def add_load(sub: Any) -> None:
    p = sub.add_parser("load", help="upsert users, assets and criteria from a JSON file")
    p.add_argument("file")
    p.set_defaults(func=cmd_load)


def add_seed(sub: Any) -> None:
    p = sub.add_parser("seed", help="write deterministic synthetic users")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_seed)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.storage.db import migrate

    check_database(settings)
    migrate(settings.database_url, args.revision)
    print(f"database at {mask_url(settings.database_url)} is at revision {args.revision}")
    return 0


def _every(line: Callable[..., None]) -> Callable[..., None]:
    """`line`, called only every LOAD_PROGRESS_USERS users (its first argument) or
    LOAD_PROGRESS_SECONDS, and once `final` unless it just said the same."""
    shown: list[int | None] = [None]
    at = [time.monotonic()]

    def report(users: int, *rest: int, final: bool = False) -> None:
        now = time.monotonic()
        due = users - (shown[0] or 0) >= LOAD_PROGRESS_USERS or now - at[0] >= LOAD_PROGRESS_SECONDS
        if due or (final and users != shown[0]):
            line(users, *rest)
            shown[0], at[0] = users, now

    return report


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.core.load_stream import LoadStream

    path = Path(args.file)
    try:
        # Read twice, a piece at a time: checked whole first, then written (issue 23).
        source = LoadStream(path)
    except FileNotFoundError:
        print(f"error: {path}: no such file", file=sys.stderr)
        return INVALID
    except OSError as exc:
        print(f"error: {path}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
        return INVALID
    markets = check_markets(settings)
    checking, writing = _load_progress(path, source, started=time.perf_counter())
    if not _checked(path, source, markets, checking):
        return INVALID
    checking(source.users, source.size, final=True)
    check_database(settings)
    report = _written(path, source, settings, writing)
    if isinstance(report, int):
        return report
    _mark_changed(settings, report)
    print(
        f"loaded {path}: {report.assets} assets, {report.users} users, {report.holdings} holdings,"
        f" {report.criteria_versions_created} new criteria version(s),"
        f" {report.users_changed} user(s) changed"
    )
    return OK


def _load_progress(
    path: Path, source: LoadStream, *, started: float
) -> tuple[Callable[..., None], Callable[..., None]]:
    """The progress lines of the check and of the writes, on stderr (`_every`)."""

    def checked(users: int, done: int) -> None:
        print(
            f"{path}: checked {users:,} users ({done / 1e6:,.1f} of {source.size / 1e6:,.1f} MB)"
            f" in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )

    def wrote(users: int) -> None:
        print(
            f"{path}: wrote {users:,} of {source.users:,} users"
            f" in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
        )

    return _every(checked), _every(wrote)


def _checked(
    path: Path, source: LoadStream, markets: dict[str, Any], progress: Callable[..., None]
) -> bool:
    """The whole file checked (nothing written yet); False once the error is printed."""
    from overnight_pipeline.core.load_errors import LoadFileError

    try:
        source.check(markets=markets, progress=progress)
    except LoadFileError as exc:
        print(f"error: {path} rejected: {exc}", file=sys.stderr)
        return False
    except OSError as exc:
        print(f"error: {path}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
        return False
    return True


def _written(
    path: Path, source: LoadStream, settings: Settings, progress: Callable[..., None]
) -> LoadReport | int:
    """The checked file written in one transaction; else the exit code, the error printed
    and everything this file wrote rolled back."""
    from overnight_pipeline.core.load_errors import LoadFileError
    from overnight_pipeline.storage.db import DatabaseError
    from overnight_pipeline.storage.loader import load_stream

    database = engine(settings)
    try:
        # One transaction: any error below rolls back everything this file wrote.
        with database.begin() as conn:
            report = load_stream(conn, source, progress=progress)
            progress(report.users, final=True)
    except LoadFileError as exc:
        print(f"error: {path} rejected: {exc}", file=sys.stderr)
        return INVALID
    except OSError as exc:
        print(
            f"error: {path}: cannot read it ({exc.strerror or exc}); nothing was written",
            file=sys.stderr,
        )
        return INVALID
    except DatabaseError as exc:
        print(
            f"error: {path}: the database refused the load, nothing was written: {reason(exc)}",
            file=sys.stderr,
        )
        return SERVICE
    finally:
        database.dispose()
    return report


def _mark_changed(settings: Settings, report: LoadReport) -> None:
    """Committed: now, best effort, the markers that tell the dashboard's cache hits these
    users' results predate their inputs (the durable record is `user_changes`)."""
    if report.changed_at is None:
        return
    import redis

    from overnight_pipeline.storage.freshness import mark_changed

    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=1)
    try:
        mark_changed(
            client, report.changed_user_ids, report.changed_at, prefix=settings.cache_prefix
        )
    except (redis.RedisError, OSError) as exc:
        print(
            f"warning: the load is committed, but Redis did not take the change markers"
            f" ({reason(exc)}): until they are recalculated, cached results of the"
            f" {report.users_changed} changed user(s) do not say their inputs changed",
            file=sys.stderr,
        )
    finally:
        client.close()


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.seed import seed

    check_database(settings)
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if total >= 10_000 or done == total:
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(
                f"\rseeded {done:,}/{total:,} users ({rate:,.0f} users/s)", end="", file=sys.stderr
            )
            if done == total:
                print(file=sys.stderr)

    with engine(settings).begin() as conn:
        report = seed(conn, users=args.users, seed=args.seed, progress=progress)
    elapsed = time.perf_counter() - started
    print(
        f"seeded {report.users:,} users, {report.holdings:,} holdings, {report.asset_classes:,}"
        f" asset classes, {report.criteria_rules:,} criteria rules over {report.assets:,} assets"
        f" in {elapsed:.1f} s"
    )
    return 0
