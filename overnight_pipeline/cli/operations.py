"""The operator's commands: `status` (is each market ready?) and `cache invalidate`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overnight_pipeline.cli.checks import (
    FAILED,
    INVALID,
    OK,
    ServiceError,
    check_database,
    check_markets,
    engine,
    reason,
    redis_problem,
)
from overnight_pipeline.settings import Settings


def add_status(sub: Any) -> None:
    p = sub.add_parser("status", help="each market's readiness for its session (exit 1: not all)")
    p.add_argument("--date", help="YYYY-MM-DD (default: each market's current or next session)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)


def add_cache(sub: Any) -> None:
    p = sub.add_parser("cache", help="the Redis cache (CACHE_PREFIX)")
    cache = p.add_subparsers(dest="cache_command", required=True)
    p = cache.add_parser("invalidate", help="delete a user's cache entries, or every entry")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="ID", help="one user's recs: and portfolio: entries")
    which.add_argument("--all", action="store_true", help="every entry under CACHE_PREFIX (SCAN)")
    p.set_defaults(func=cmd_cache_invalidate)


def cmd_status(args: argparse.Namespace, settings: Settings) -> int:
    """Each market's readiness for its session on --date (default: its current or next
    session); 0 when every market with a session is ready, 1 otherwise (a market before its
    open is pending, not ready)."""
    from datetime import UTC, date, datetime

    from overnight_pipeline.status import as_json, as_table, everything_ready
    from overnight_pipeline.storage.job_runs import market_readiness

    markets = check_markets(settings)
    day = None
    if args.date is not None:
        try:
            day = date.fromisoformat(args.date)
        except ValueError:
            print(f"error: --date must be YYYY-MM-DD (got {args.date!r})", file=sys.stderr)
            return INVALID
    check_database(settings)
    now = datetime.now(UTC)
    database = engine(settings)
    try:
        with database.connect() as conn:
            judged = market_readiness(conn, list(markets.values()), now=now, day=day)
    finally:
        database.dispose()
    print(as_json(judged, now=now, day=args.date) if args.json else as_table(judged, now=now))
    return OK if everything_ready(judged) else FAILED


def cmd_cache_invalidate(args: argparse.Namespace, settings: Settings) -> int:
    import uuid

    import redis

    from overnight_pipeline.storage.cache_invalidation import invalidate, invalidate_all

    user_id = None
    if args.user is not None:
        try:
            user_id = uuid.UUID(args.user)
        except ValueError:
            print(f"error: --user must be a UUID (got {args.user!r})", file=sys.stderr)
            return INVALID
    problem = redis_problem(settings.redis_url)
    if problem:
        raise ServiceError(problem)
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=10, socket_connect_timeout=1)
    prefix = settings.cache_prefix
    try:
        if user_id is not None:
            report = invalidate(client, user_id, prefix=prefix)
        else:
            report = invalidate_all(client, prefix=prefix)
    except (redis.RedisError, OSError) as exc:
        raise ServiceError(f"REDIS_URL: {reason(exc)}") from None
    finally:
        client.close()
    users = "user" if report.removed == 1 else "users"
    print(
        f"invalidated {report.removed} {users} under CACHE_PREFIX={prefix!r};"
        f" {report.kept_newer} kept (generated after the command started)"
    )
    return OK
