"""The commands that run the pipeline: `run`, `reexecute`, `demo`, `backfill` and
`recalculate`."""

from __future__ import annotations

import argparse
import sys
from datetime import date
from typing import TYPE_CHECKING, Any

from overnight_pipeline.cli.checks import (
    FAILED,
    INVALID,
    OK,
    SERVICE,
    ServiceError,
    check_dagster_database,
    check_database,
    check_market_data,
    check_markets,
    engine,
    redis_problem,
)
from overnight_pipeline.settings import Settings

if TYPE_CHECKING:
    from overnight_pipeline.core.readiness import Readiness


def add_run(sub: Any) -> None:
    p = sub.add_parser("run", help="materialise one market-date partition in this process")
    p.add_argument("--market", required=True)
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.add_argument("--skip-cache", action="store_true", help="leave out the Redis step")
    p.set_defaults(func=cmd_run)


def add_reexecute(sub: Any) -> None:
    p = sub.add_parser(
        "reexecute",
        help="re-execute a failed run from failure, in this process (DAGSTER_HOME's instance)",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_reexecute)


def add_backfill(sub: Any) -> None:
    p = sub.add_parser(
        "backfill",
        help="run again the market-dates of a range whose night was missing, failed, partial "
        "or late, newest first, through the Dagster instance (DAGSTER_HOME)",
    )
    p.add_argument("--from", dest="first", required=True, metavar="D1", help="YYYY-MM-DD")
    p.add_argument("--to", dest="last", required=True, metavar="D2", help="YYYY-MM-DD")
    p.add_argument("--markets", help="comma list (default: every configured market)")
    p.add_argument(
        "--only", required=True, help="comma list of missing, failed, partial (ready-partial), late"
    )
    p.add_argument("--dry-run", action="store_true", help="print what would launch, launch nothing")
    p.set_defaults(func=cmd_backfill)


def add_recalculate(sub: Any) -> None:
    p = sub.add_parser(
        "recalculate", help="recalculate now the users whose inputs changed (or one user)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--changed", action="store_true", help="every user with a pending change (user_changes)"
    )
    which.add_argument("--user", metavar="ID", help="this user, changed or not")
    p.set_defaults(func=cmd_recalculate)


def add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="seed demo users and run each market's current or next session")
    p.add_argument("--users", type=int, default=1000)
    p.set_defaults(func=cmd_demo)


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    markets = check_markets(settings)
    if args.market not in markets:
        print(
            f"error: --market must be one of {', '.join(markets)} (got {args.market!r})",
            file=sys.stderr,
        )
        return INVALID
    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"error: --date must be YYYY-MM-DD (got {args.date!r})", file=sys.stderr)
        return INVALID
    check_market_data(settings)
    check_database(settings)
    check_dagster_database(settings)
    from overnight_pipeline.runner import run_partition, table

    with_cache = not args.skip_cache
    problem = redis_problem(settings.redis_url) if with_cache else None
    if problem:
        print(
            f"warning: {problem}: the cache step will fail (use --skip-cache to leave it out)",
            file=sys.stderr,
        )
    summary = run_partition(settings, args.market, day, with_cache=with_cache)
    print(table([summary]))
    return OK if summary.success else FAILED


def cmd_reexecute(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.runner import ReexecuteError, reexecute, table

    check_database(settings)
    check_dagster_database(settings)
    try:
        summary = reexecute(settings, args.run_id)
    except ReexecuteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INVALID
    print(f"re-executed {args.run_id} from failure as run {summary.run_id}")
    print(table([summary]))
    return OK if summary.success else FAILED


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    check_markets(settings)
    check_market_data(settings)
    check_database(settings)
    check_dagster_database(settings)
    from overnight_pipeline.runner import demo

    return demo(settings, users=args.users)


def cmd_backfill(args: argparse.Namespace, settings: Settings) -> int:
    """Launch again the market-dates of --from..--to whose readiness state is in --only,
    newest first, through the Dagster instance (--dry-run: print them only)."""
    from collections import Counter
    from datetime import UTC, datetime

    from overnight_pipeline.backfill import describe, judge_range, select

    markets = check_markets(settings)
    wanted = _backfill_range(args, markets)
    if wanted is None:
        return INVALID
    first, last, names, states = wanted
    check_database(settings)
    database = engine(settings)
    try:
        with database.connect() as conn:
            judged = judge_range(
                conn, [markets[m] for m in dict.fromkeys(names)], first, last, now=datetime.now(UTC)
            )
    finally:
        database.dispose()
    chosen = select(judged, states)
    others = Counter(r.state for r in judged if r not in chosen)
    print(
        f"{len(judged)} market-dates from {first} to {last} ({', '.join(dict.fromkeys(names))}):"
        f" {len(chosen)} {args.only}"
        + (f"; left: {', '.join(f'{n} {s}' for s, n in sorted(others.items()))}" if others else "")
    )
    if not chosen:
        print("nothing to launch")
        return OK
    if args.dry_run:
        for r in chosen:
            print(f"would launch  {describe(r)}")
        print("dry run: nothing launched")
        return OK
    check_dagster_database(settings)
    return _launch(chosen, states)


def _backfill_range(
    args: argparse.Namespace, markets: dict[str, Any]
) -> tuple[date, date, list[str], list[str]] | None:
    """--from, --to, --markets and --only, checked; None once the error is printed."""
    from overnight_pipeline.backfill import parse_only

    try:
        first, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    except ValueError:
        print(
            f"error: --from and --to must be YYYY-MM-DD (got {args.first!r}, {args.last!r})",
            file=sys.stderr,
        )
        return None
    if last < first:
        print(
            f"error: --from {first} --to {last}: not a range (--to is before --from)",
            file=sys.stderr,
        )
        return None
    names = [m.strip() for m in (args.markets or ",".join(markets)).split(",") if m.strip()]
    unknown = [m for m in names if m not in markets]
    if unknown or not names:
        print(
            f"error: --markets must be among {', '.join(markets)} (got {args.markets!r})",
            file=sys.stderr,
        )
        return None
    try:
        states = parse_only(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return None
    from overnight_pipeline.defs.partitions import START_DATE  # imports Dagster

    if first < date.fromisoformat(START_DATE):
        print(f"error: --from {first}: the partitions start on {START_DATE}", file=sys.stderr)
        return None
    return first, last, names, states


def _launch(chosen: list[Readiness], states: list[str]) -> int:
    """Queue the chosen market-dates' runs on the Dagster instance, saying each."""
    import os

    from overnight_pipeline.backfill import TRIGGER_TAG, describe, launch
    from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
    from overnight_pipeline.runner import LOCAL_HOME, instance

    home = os.environ.get("DAGSTER_HOME") or str(LOCAL_HOME)
    launched = 0
    tags = {TRIGGER_TAG: "backfill", "overnight/backfill_only": ",".join(states)}
    try:
        for r, run in zip(
            chosen, launch(instance(), chosen, job_name=OVERNIGHT_JOB, tags=tags), strict=False
        ):
            print(f"launched      {describe(r)} -> run {run.run_id}", flush=True)
            launched += 1
    except Exception as exc:
        print(
            f"error: launched {launched} of {len(chosen)} runs, then the Dagster instance at "
            f"{home} refused: {type(exc).__name__}: {str(exc)[:300]}",
            file=sys.stderr,
        )
        return SERVICE
    print(
        f"{launched} {'run' if launched == 1 else 'runs'} queued on the Dagster instance at"
        f" {home}: its daemon runs them,"
        " at most one per market at a time"
    )
    return OK


def _user_exists(settings: Settings, user: str) -> bool:
    import uuid

    from overnight_pipeline.storage.changes import active_flags
    from overnight_pipeline.storage.db import make_engine

    database = make_engine(settings.database_url)
    try:
        with database.connect() as conn:
            return bool(active_flags(conn, [uuid.UUID(user)]))
    finally:
        database.dispose()


def cmd_recalculate(args: argparse.Namespace, settings: Settings) -> int:
    import uuid

    user = None
    if args.user is not None:
        try:
            user = str(uuid.UUID(args.user))
        except ValueError:
            print(f"error: --user must be a UUID (got {args.user!r})", file=sys.stderr)
            return INVALID
    check_markets(settings)
    check_database(settings)
    check_dagster_database(settings)
    problem = redis_problem(settings.redis_url)
    if problem:
        raise ServiceError(problem)
    from overnight_pipeline.runner import run_recalculation

    if user is not None and not _user_exists(settings, user):
        print(f"error: --user: no user with id {user}", file=sys.stderr)
        return INVALID
    summary = run_recalculation(settings, user=user)
    if not summary.success:
        print(f"error: recalculation run {summary.run_id} failed: {summary.error}", file=sys.stderr)
        return FAILED
    m = summary.metadata
    print(
        f"recalculated {m.get('users_computed', 0)} user(s), {m.get('users_failed', 0)} failed,"
        f" {m.get('users_dropped', 0)} inactive or without holdings (cache entries removed),"
        f" {m.get('users_waiting', 0)} waiting for their market's first night;"
        f" cache: {m.get('cache_written', 0)} written, {m.get('cache_kept_newer', 0)} newer kept;"
        f" market-dates: {', '.join(m.get('market_dates') or []) or '-'}"
        f" (run {summary.run_id}, {m.get('status', '?')})"
    )
    return OK if m.get("status") != "partial" else FAILED
