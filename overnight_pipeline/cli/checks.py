"""What every `overnight` command shares: its exit codes, the errors that end it, and the
checks of the services and settings it needs before it does anything."""

from __future__ import annotations

from typing import Any

from overnight_pipeline.settings import Settings, mask_url

OK, FAILED, INVALID, SERVICE = 0, 1, 2, 3
# A refused or unroutable service is reported within this many seconds, not after libpq's
# default of waiting forever.
CONNECT_TIMEOUT = 5


class ServiceError(Exception):
    """A service cannot be used; the message names the variable (exit code 3)."""


class InvalidSetting(Exception):
    """A setting's value is well formed but unusable, e.g. MARKETS_FILE (exit code 2)."""


def _connect_args(settings: Settings) -> dict[str, Any]:
    return {} if settings.is_sqlite else {"connect_timeout": CONNECT_TIMEOUT}


def engine(settings: Settings) -> Any:
    """An engine for DATABASE_URL that gives up connecting after `CONNECT_TIMEOUT`."""
    from overnight_pipeline.storage.db import make_engine

    return make_engine(settings.database_url, connect_args=_connect_args(settings))


def reason(exc: BaseException) -> str:
    """The driver's reason for a failure, in a few words, without a URL or password."""
    text = str(getattr(exc, "orig", None) or exc)
    lowered = text.lower()
    for needle, said in (
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
            return said
    first = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    # psycopg: 'connection failed: connection to server at "h" (ip), port 5432 failed: FATAL:  x'
    first = first.rsplit("failed: ", 1)[-1].removeprefix("FATAL:").strip()
    return first[:200]


def database_unreachable(url: str) -> str:
    """The one line saying why DATABASE_URL cannot be connected to."""
    from overnight_pipeline.storage.db import location

    backend, where = location(url)
    if backend == "sqlite":
        return f"DATABASE_URL: cannot open {where}"
    return f"DATABASE_URL: cannot connect to {where}"


def check_database(settings: Settings) -> None:
    """Connect once; `ServiceError` naming DATABASE_URL, host, port and reason if it fails."""
    from overnight_pipeline.storage.db import connect_failure

    failure = connect_failure(settings.database_url, connect_args=_connect_args(settings))
    if failure is not None:
        raise ServiceError(f"{database_unreachable(settings.database_url)} ({reason(failure)})")


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
        return f"REDIS_URL: cannot connect to {where.rsplit('@', 1)[-1]} ({reason(exc)})"
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
    from overnight_pipeline.storage.db import connect_failure, location

    failure = connect_failure(
        settings.dagster_pg_url, connect_args={"connect_timeout": CONNECT_TIMEOUT}, plain=True
    )
    if failure is not None:
        _, where = location(settings.dagster_pg_url)
        raise ServiceError(f"DAGSTER_PG_URL: cannot connect to {where} ({reason(failure)})")
