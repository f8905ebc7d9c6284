"""The `overnight` command (BEHAVIOUR §10).

Exit codes: 0 done; 1 a run finished with failures (`partial` or `failed`); 2 invalid input
(a setting, an argument or a load file; nothing was done); 3 a service cannot be used (the
database unreachable or failing: the transaction was rolled back).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from overnight_pipeline.settings import Settings, SettingsError, get_settings, mask_url

OK, FAILED, INVALID, SERVICE = 0, 1, 2, 3
# A refused or unroutable service is reported within this many seconds, not after libpq's
# default of waiting forever.
CONNECT_TIMEOUT = 5


class ServiceError(Exception):
    """A service cannot be used; the message names the variable (exit code 3)."""


class InvalidSetting(Exception):
    """A setting's value is well formed but unusable, e.g. MARKETS_FILE (exit code 2)."""


def _engine(settings: Settings) -> Any:
    from overnight_pipeline.storage.db import make_engine

    connect_args = {} if settings.is_sqlite else {"connect_timeout": CONNECT_TIMEOUT}
    return make_engine(settings.database_url, connect_args=connect_args)


def _reason(exc: BaseException) -> str:
    """The driver's reason for a failure, in a few words, without a URL or password."""
    text = str(getattr(exc, "orig", None) or exc)
    lowered = text.lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("timeout expired", "timed out"),
        ("timed out", "timed out"),
        ("could not translate host name", "unknown host"),
        ("name or service not known", "unknown host"),
        ("password authentication failed", "password authentication failed"),
        ("unable to open database file", "cannot open the SQLite file"),
        ("no route to host", "no route to host"),
    ):
        if needle in lowered:
            return reason
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    # psycopg: 'connection failed: connection to server at "h" (ip), port 5432 failed: FATAL:  x'
    first = first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
    return first[:200]


def database_unreachable(url: str) -> str:
    """The one line saying why DATABASE_URL cannot be connected to."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"DATABASE_URL: cannot open {parsed.database or ':memory:'}"
    return f"DATABASE_URL: cannot connect to {parsed.host or 'localhost'}:{parsed.port or 5432}"


def check_database(settings: Settings) -> None:
    """Connect once; `ServiceError` naming DATABASE_URL, host, port and reason if it fails."""
    from sqlalchemy import text
    from sqlalchemy.exc import SQLAlchemyError

    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        raise ServiceError(
            f"{database_unreachable(settings.database_url)} ({_reason(exc)})"
        ) from None
    finally:
        engine.dispose()


def redis_problem(url: str) -> str | None:
    """None when Redis at `url` answers PING, else the line saying why not."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, OSError, ValueError) as exc:
        where = url if url.startswith("unix:") else mask_url(url).split("://", 1)[-1].split("/")[0]
        return f"REDIS_URL: cannot connect to {where.rsplit('@', 1)[-1]} ({_reason(exc)})"
    return None


def check_markets(settings: Settings) -> dict[str, Any]:
    """The configured markets; `InvalidSetting` naming MARKETS_FILE if the file is unusable."""
    from overnight_pipeline.core.markets import MarketsFileError, load_markets

    try:
        return dict(load_markets(settings.markets_file))
    except MarketsFileError as exc:
        raise InvalidSetting(f"MARKETS_FILE: {exc}") from None


def check_market_data(settings: Settings) -> None:
    from overnight_pipeline.providers.factory import MarketDataError, check_files_dir

    if settings.market_data.startswith("files:"):
        try:
            check_files_dir(settings.market_data)
        except MarketDataError as exc:
            raise InvalidSetting(str(exc)) from None


def check_dagster_database(settings: Settings) -> None:
    if settings.dagster_pg_url is None:
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(
        settings.dagster_pg_url, connect_args={"connect_timeout": CONNECT_TIMEOUT}
    )
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except (SQLAlchemyError, OSError) as exc:
        url = make_url(settings.dagster_pg_url)
        raise ServiceError(
            f"DAGSTER_PG_URL: cannot connect to {url.host or 'localhost'}:"
            f"{url.port or 5432} ({_reason(exc)})"
        ) from None
    finally:
        engine.dispose()


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.storage.db import migrate

    check_database(settings)
    migrate(settings.database_url, args.revision)
    print(f"database at {_safe_url(settings.database_url)} is at revision {args.revision}")
    return 0


# `overnight load` says how far it is on stderr every this many users, or seconds.
LOAD_PROGRESS_USERS = 10_000
LOAD_PROGRESS_SECONDS = 5.0


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
    from sqlalchemy.exc import SQLAlchemyError

    from overnight_pipeline.core.load_errors import LoadFileError
    from overnight_pipeline.core.load_stream import LoadStream
    from overnight_pipeline.storage.loader import load_stream

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
    started = time.perf_counter()

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

    checking, writing = _every(checked), _every(wrote)
    try:
        source.check(markets=markets, progress=checking)
    except LoadFileError as exc:
        print(f"error: {path} rejected: {exc}", file=sys.stderr)
        return INVALID
    except OSError as exc:
        print(f"error: {path}: cannot read it ({exc.strerror or exc})", file=sys.stderr)
        return INVALID
    checking(source.users, source.size, final=True)
    check_database(settings)
    engine = _engine(settings)
    try:
        # One transaction: any error below rolls back everything this file wrote.
        with engine.begin() as conn:
            report = load_stream(conn, source, progress=writing)
            writing(report.users, final=True)
    except LoadFileError as exc:
        print(f"error: {path} rejected: {exc}", file=sys.stderr)
        return INVALID
    except OSError as exc:
        print(
            f"error: {path}: cannot read it ({exc.strerror or exc}); nothing was written",
            file=sys.stderr,
        )
        return INVALID
    except SQLAlchemyError as exc:
        print(
            f"error: {path}: the database refused the load, nothing was written: {_reason(exc)}",
            file=sys.stderr,
        )
        return SERVICE
    finally:
        engine.dispose()
    if report.changed_at is not None:
        import redis

        from overnight_pipeline.storage.freshness import mark_changed

        # Committed: now, best effort, the markers that tell the dashboard's cache hits these
        # users' results predate their inputs (the durable record is `user_changes`).
        client = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=1
        )
        try:
            mark_changed(
                client, report.changed_user_ids, report.changed_at, prefix=settings.cache_prefix
            )
        except (redis.RedisError, OSError) as exc:
            print(
                f"warning: the load is committed, but Redis did not take the change markers"
                f" ({_reason(exc)}): until they are recalculated, cached results of the"
                f" {report.users_changed} changed user(s) do not say their inputs changed",
                file=sys.stderr,
            )
        finally:
            client.close()
    print(
        f"loaded {path}: {report.assets} assets, {report.users} users, {report.holdings} holdings,"
        f" {report.criteria_versions_created} new criteria version(s),"
        f" {report.users_changed} user(s) changed"
    )
    return OK


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

    with _engine(settings).begin() as conn:
        report = seed(conn, users=args.users, seed=args.seed, progress=progress)
    elapsed = time.perf_counter() - started
    print(
        f"seeded {report.users:,} users, {report.holdings:,} holdings, {report.asset_classes:,}"
        f" asset classes, {report.criteria_rules:,} criteria rules over {report.assets:,} assets"
        f" in {elapsed:.1f} s"
    )
    return 0


def _duration(text: str) -> int:
    """Seconds from '3600', '90s', '30m', '24h' or '7d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], text[-1]) if text[-1:] in units else (text, "s")
    if not number.isdigit() or int(number) <= 0:
        raise argparse.ArgumentTypeError(
            f"must be a positive duration like 3600, 30m, 24h or 7d (got {text!r})"
        )
    return int(number) * units[unit]


def cmd_token(args: argparse.Namespace, settings: Settings) -> int:
    import uuid
    from datetime import timedelta

    from dashboard_api.auth import issue_token

    try:
        user_id = uuid.UUID(args.user_id)
    except ValueError:
        print(f"error: USER_ID must be a UUID (got {args.user_id!r})", file=sys.stderr)
        return 2
    ttl = timedelta(seconds=args.ttl)
    print(issue_token(settings.dashboard_secret, user_id, admin=args.admin, ttl=ttl))
    return 0


def check_metrics_port(host: str, port: int, *, dashboard_port: int) -> None:
    """METRICS=PORT must name a port of its own that is free on `host` (checked here: the
    lifespan that binds it would fail with a traceback)."""
    import socket

    if port == dashboard_port:
        raise InvalidSetting(
            f"METRICS: {port} is the dashboard's own port (--port); use METRICS=same for that"
        )
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
    except OSError as exc:
        raise ServiceError(
            f"METRICS: cannot listen on {host}:{port} ({exc.strerror or exc})"
        ) from None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from dashboard_api.app import create_app
    from overnight_pipeline.logs import uvicorn_logging
    from overnight_pipeline.telemetry import tracer_provider

    check_database(settings)
    check_markets(settings)  # the metrics judge each market's sessions on its calendar
    problem = redis_problem(settings.redis_url)
    if problem:
        print(f"warning: {problem}: the dashboard answers from PostgreSQL", file=sys.stderr)
    # Request spans go wherever OTEL_* says (no-op when nothing exports).
    provider = tracer_provider(settings)
    if settings.metrics.isdigit():  # a second server, started and stopped by the lifespan
        check_metrics_port(args.host, int(settings.metrics), dashboard_port=args.port)
        print(f"metrics on http://{args.host}:{settings.metrics}/metrics", file=sys.stderr)
    # uvloop + httptools: several times the requests/s of the pure-Python loop and parser
    # (docs/PERFORMANCE.md, "Figures once quoted in the code").
    uvicorn.run(
        create_app(settings, tracer_provider=provider, metrics_host=args.host),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=args.access_log,
        log_level="info",
        **uvicorn_logging(settings.log_format),
    )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

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
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            judged = market_readiness(conn, list(markets.values()), now=now, day=day)
    finally:
        engine.dispose()
    print(as_json(judged, now=now, day=args.date) if args.json else as_table(judged, now=now))
    return OK if everything_ready(judged) else FAILED


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
    import os
    from collections import Counter
    from datetime import UTC, date, datetime

    from overnight_pipeline.backfill import TRIGGER_TAG, describe, judge_range, parse_only, select

    markets = check_markets(settings)
    try:
        first, last = date.fromisoformat(args.first), date.fromisoformat(args.last)
    except ValueError:
        print(
            f"error: --from and --to must be YYYY-MM-DD (got {args.first!r}, {args.last!r})",
            file=sys.stderr,
        )
        return INVALID
    if last < first:
        print(
            f"error: --from {first} --to {last}: not a range (--to is before --from)",
            file=sys.stderr,
        )
        return INVALID
    names = [m.strip() for m in (args.markets or ",".join(markets)).split(",") if m.strip()]
    unknown = [m for m in names if m not in markets]
    if unknown or not names:
        print(
            f"error: --markets must be among {', '.join(markets)} (got {args.markets!r})",
            file=sys.stderr,
        )
        return INVALID
    try:
        states = parse_only(args.only)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INVALID
    from overnight_pipeline.defs.partitions import START_DATE  # imports Dagster

    if first < date.fromisoformat(START_DATE):
        print(f"error: --from {first}: the partitions start on {START_DATE}", file=sys.stderr)
        return INVALID
    check_database(settings)
    engine = _engine(settings)
    try:
        with engine.connect() as conn:
            judged = judge_range(
                conn, [markets[m] for m in dict.fromkeys(names)], first, last, now=datetime.now(UTC)
            )
    finally:
        engine.dispose()
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
    from overnight_pipeline.backfill import launch
    from overnight_pipeline.defs import OVERNIGHT_JOB
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
        raise ServiceError(f"REDIS_URL: {_reason(exc)}") from None
    finally:
        client.close()
    users = "user" if report.removed == 1 else "users"
    print(
        f"invalidated {report.removed} {users} under CACHE_PREFIX={prefix!r};"
        f" {report.kept_newer} kept (generated after the command started)"
    )
    return OK


def _user_exists(settings: Settings, user: str) -> bool:
    import uuid

    from overnight_pipeline.storage.changes import active_flags
    from overnight_pipeline.storage.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return bool(active_flags(conn, [uuid.UUID(user)]))
    finally:
        engine.dispose()


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


def _safe_url(url: str) -> str:
    return mask_url(url)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overnight", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("migrate", help="apply the database migrations (DATABASE_URL)")
    p.add_argument("--revision", default="head")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("load", help="upsert users, assets and criteria from a JSON file")
    p.add_argument("file")
    p.set_defaults(func=cmd_load)

    p = sub.add_parser("seed", help="write deterministic synthetic users")
    p.add_argument("--users", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_seed)

    p = sub.add_parser("token", help="print a dashboard token (JWT) for USER_ID, alone on stdout")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--admin", action="store_true", help="allow the job-runs endpoint")
    p.add_argument("--ttl", type=_duration, default=86400, help="lifetime: 3600, 30m, 24h, 7d")
    p.set_defaults(func=cmd_token)

    p = sub.add_parser("serve", help="run the dashboard API and page (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("run", help="materialise one market-date partition in this process")
    p.add_argument("--market", required=True)
    p.add_argument("--date", required=True, help="YYYY-MM-DD")
    p.add_argument("--skip-cache", action="store_true", help="leave out the Redis step")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "reexecute",
        help="re-execute a failed run from failure, in this process (DAGSTER_HOME's instance)",
    )
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_reexecute)

    p = sub.add_parser("status", help="each market's readiness for its session (exit 1: not all)")
    p.add_argument("--date", help="YYYY-MM-DD (default: each market's current or next session)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_status)

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

    p = sub.add_parser("cache", help="the Redis cache (CACHE_PREFIX)")
    cache = p.add_subparsers(dest="cache_command", required=True)
    p = cache.add_parser("invalidate", help="delete a user's cache entries, or every entry")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--user", metavar="ID", help="one user's recs: and portfolio: entries")
    which.add_argument("--all", action="store_true", help="every entry under CACHE_PREFIX (SCAN)")
    p.set_defaults(func=cmd_cache_invalidate)

    p = sub.add_parser(
        "recalculate", help="recalculate now the users whose inputs changed (or one user)"
    )
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--changed", action="store_true", help="every user with a pending change (user_changes)"
    )
    which.add_argument("--user", metavar="ID", help="this user, changed or not")
    p.set_defaults(func=cmd_recalculate)

    p = sub.add_parser("demo", help="seed demo users and run each market's current or next session")
    p.add_argument("--users", type=int, default=1000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INVALID
    from overnight_pipeline import logs

    logs.configure(settings.log_format)
    try:
        return int(args.func(args, settings))
    except InvalidSetting as exc:
        print(f"error: {exc}", file=sys.stderr)
        return INVALID
    except ServiceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return SERVICE
    except SQLAlchemyError as exc:
        # Connected at start, failed later (server restarted, schema missing, ...).
        print(f"error: database error: {_reason(exc)}", file=sys.stderr)
        return SERVICE


if __name__ == "__main__":
    sys.exit(main())
