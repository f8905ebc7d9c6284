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
