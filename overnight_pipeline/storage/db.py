"""Engines and migrations: the same code for PostgreSQL and the embedded SQLite."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import psycopg
import sqlalchemy.exc
from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# What a failing database raises (refused, lost, a statement rejected): the name callers
# outside storage catch, so that only storage imports SQLAlchemy.
DatabaseError = SQLAlchemyError


# TimeoutError (a pool checkout or `fail_after`) is an OSError.
DB_ERRORS = (psycopg.Error, SQLAlchemyError, OSError)
# The database cannot be reached, dropped the connection or did not answer in time (a
# statement timeout is psycopg's QueryCanceled, an OperationalError): a 503. Anything else
# (a value or statement it refused) is the caller's bug (the dashboard's logged 500).
UNAVAILABLE_ERRORS = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    OSError,
)


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def dumps_json(value: Any) -> str:
    """orjson (several times stdlib `json`: docs/PERFORMANCE.md, "Figures once quoted in the
    code") with Decimals as strings, never floats."""
    return orjson.dumps(value, default=_json_default).decode()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`; SQLite gets its directory, foreign keys and WAL."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, json_serializer=dumps_json, json_deserializer=orjson.loads, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    kwargs.setdefault("pool_pre_ping", True)
    if parsed.get_driver_name() == "psycopg":
        # Never prepare server-side: psycopg would from a statement's sixth execution, and
        # PostgreSQL's generic plan of `user_id = ANY($1)` then searches the array linearly
        # for every row of a scan planned while the table was small (the DELETE of a batch's
        # scores slowed that way as the table grew: docs/PERFORMANCE.md, "The overnight
        # pipeline end to end"). Unprepared, each batch is planned for its own ids.
        kwargs["connect_args"] = {"prepare_threshold": None, **kwargs.get("connect_args", {})}
    return create_engine(url, json_serializer=dumps_json, json_deserializer=orjson.loads, **kwargs)


def ping(conn: Connection) -> None:
    """`SELECT 1` on `conn`: raises when the database cannot answer."""
    conn.execute(text("SELECT 1")).scalar_one()


def location(url: str) -> tuple[str, str]:
    """`url`'s backend and where it points, as a message names it: the SQLite file
    (':memory:' when none), else host:port with libpq's defaults (localhost, 5432)."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return backend, parsed.database or ":memory:"
    return backend, f"{parsed.host or 'localhost'}:{parsed.port or 5432}"


def connect_failure(
    url: str, *, connect_args: dict[str, Any], plain: bool = False
) -> SQLAlchemyError | OSError | None:
    """None when the database at `url` answers `SELECT 1`, else what connecting raised.
    `plain`: another program's database (Dagster's), with SQLAlchemy's own engine."""
    if plain:
        engine = create_engine(url, connect_args=connect_args)
    else:
        engine = make_engine(url, connect_args=connect_args)
    try:
        with engine.connect() as conn:
            ping(conn)
    except (SQLAlchemyError, OSError) as exc:
        return exc
    finally:
        engine.dispose()
    return None


def alembic_config(url: str) -> Config:
    # Alembic is imported to migrate only: every `overnight` command imports this module.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def migrate(url: str, revision: str = "head") -> None:
    """Bring the database at `url` to `revision` (default: the newest)."""
    from alembic import command

    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str = "base") -> None:
    from alembic import command

    command.downgrade(alembic_config(url), revision)
