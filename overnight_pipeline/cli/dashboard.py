"""The dashboard's commands: `serve` it, and print a `token` to sign in to it."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from overnight_pipeline.cli.checks import (
    InvalidSetting,
    ServiceError,
    check_database,
    check_markets,
    redis_problem,
)
from overnight_pipeline.settings import Settings


def add_token(sub: Any) -> None:
    p = sub.add_parser("token", help="print a dashboard token (JWT) for USER_ID, alone on stdout")
    p.add_argument("user_id", metavar="USER_ID")
    p.add_argument("--admin", action="store_true", help="allow the job-runs endpoint")
    p.add_argument("--ttl", type=_duration, default=86400, help="lifetime: 3600, 30m, 24h, 7d")
    p.set_defaults(func=cmd_token)


def add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="run the dashboard API and page (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--access-log", action="store_true", help="log every request")
    p.set_defaults(func=cmd_serve)


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
