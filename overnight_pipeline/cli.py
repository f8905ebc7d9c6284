"""The `overnight` command (SPEC §10)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from overnight_pipeline.settings import Settings, SettingsError, get_settings


def _engine(settings: Settings):
    from overnight_pipeline.storage.db import make_engine

    return make_engine(settings.database_url)


def cmd_migrate(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.storage.db import migrate

    migrate(settings.database_url, args.revision)
    print(f"database at {_safe_url(settings.database_url)} is at revision {args.revision}")
    return 0


def cmd_load(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.core.load_file import LoadFileError, parse_load_file
    from overnight_pipeline.core.markets import load_markets
    from overnight_pipeline.storage.loader import load

    path = Path(args.file)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        print(f"error: {path}: no such file", file=sys.stderr)
        return 2
    except json.JSONDecodeError as exc:
        print(f"error: {path}: not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        doc = parse_load_file(raw, markets=load_markets(settings.markets_file))
        with _engine(settings).begin() as conn:
            report = load(conn, doc)
    except LoadFileError as exc:
        print(f"error: {path} rejected: {exc}", file=sys.stderr)
        return 2
    print(f"loaded {path}: {report.assets} assets, {report.users} users, {report.holdings} holdings,"
          f" {report.criteria_versions_created} new criteria version(s)")  # fmt: skip
    return 0


def cmd_seed(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.seed import seed

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
    print(f"seeded {report.users:,} users, {report.holdings:,} holdings, {report.asset_classes:,}"
          f" asset classes, {report.criteria_rules:,} criteria rules over {report.assets:,} assets"
          f" in {elapsed:.1f} s")  # fmt: skip
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


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    import uvicorn

    from dashboard_api.app import create_app
    from overnight_pipeline.telemetry import tracer_provider

    # Request spans go wherever OTEL_* says (no-op when nothing exports).
    provider = tracer_provider(settings)
    # uvloop + httptools: about 3x the requests/s of the pure-Python loop and parser here.
    uvicorn.run(
        create_app(settings, tracer_provider=provider),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=args.access_log,
        log_level="info",
    )
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from datetime import date

    from overnight_pipeline.core.markets import load_markets
    from overnight_pipeline.runner import redis_reachable, run_partition, table

    markets = load_markets(settings.markets_file)
    if args.market not in markets:
        print(f"error: --market must be one of {', '.join(markets)} (got {args.market!r})",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        day = date.fromisoformat(args.date)
    except ValueError:
        print(f"error: --date must be YYYY-MM-DD (got {args.date!r})", file=sys.stderr)
        return 2
    with_cache = not args.skip_cache
    if with_cache and not redis_reachable(settings.redis_url):
        print(f"warning: Redis at {settings.redis_url} is unreachable: the cache step will fail"
              " (use --skip-cache to leave it out)", file=sys.stderr)  # fmt: skip
    summary = run_partition(settings, args.market, day, with_cache=with_cache)
    print(table([summary]))
    return 0 if summary.success else 1


def cmd_reexecute(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.runner import ReexecuteError, reexecute, table

    try:
        summary = reexecute(settings, args.run_id)
    except ReexecuteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"re-executed {args.run_id} from failure as run {summary.run_id}")
    print(table([summary]))
    return 0 if summary.success else 1


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from overnight_pipeline.runner import demo

    return demo(settings, users=args.users)


def _safe_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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

    p = sub.add_parser("reexecute", help="re-execute a failed run from failure, in this process "
                       "(DAGSTER_HOME's instance)")  # fmt: skip
    p.add_argument("run_id", metavar="RUN_ID")
    p.set_defaults(func=cmd_reexecute)

    p = sub.add_parser("demo", help="seed demo users and run today's partition of each market")
    p.add_argument("--users", type=int, default=1000)
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = get_settings()
    except SettingsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return int(args.func(args, settings))


if __name__ == "__main__":
    sys.exit(main())
