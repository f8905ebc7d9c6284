"""The `overnight` command (BEHAVIOUR §10).

Exit codes: 0 done; 1 a run finished with failures (`partial` or `failed`); 2 invalid input
(a setting, an argument or a load file; nothing was done); 3 a service cannot be used (the
database unreachable or failing: the transaction was rolled back).
"""

from __future__ import annotations

import argparse
import sys

from overnight_pipeline.cli import dashboard, data, operations, runs
from overnight_pipeline.cli.checks import INVALID, SERVICE, InvalidSetting, ServiceError, reason
from overnight_pipeline.settings import SettingsError, get_settings


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="overnight", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (
        data.add_migrate,
        data.add_load,
        data.add_seed,
        dashboard.add_token,
        dashboard.add_serve,
        runs.add_run,
        runs.add_reexecute,
        operations.add_status,
        runs.add_backfill,
        operations.add_cache,
        runs.add_recalculate,
        runs.add_demo,
    ):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from overnight_pipeline.storage.db import DatabaseError

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
    except DatabaseError as exc:
        # Connected at start, failed later (server restarted, schema missing, ...).
        print(f"error: database error: {reason(exc)}", file=sys.stderr)
        return SERVICE
