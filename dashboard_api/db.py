"""The app database: the SQLAlchemy engine, used from a bounded threadpool (PostgreSQL or
the embedded SQLite; every route, the dashboard's batched cache-miss read included)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio
import psycopg
import sqlalchemy.exc
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from dashboard_api.problems import Problem

T = TypeVar("T")
log = logging.getLogger("dashboard_api")

# TimeoutError (a pool checkout or `fail_after`) is an OSError.
DB_ERRORS = (psycopg.Error, SQLAlchemyError, OSError)
# The database cannot be reached, dropped the connection or did not answer in time (a
# statement timeout is psycopg's QueryCanceled, an OperationalError): a 503. Anything else
# (a value or statement it refused) is this server's bug, the logged 500: every parameter
# is parsed into a value the database accepts before a query is sent.
UNAVAILABLE_ERRORS = (
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.TimeoutError,
    sqlalchemy.exc.DisconnectionError,
    OSError,
)


def unavailable() -> Problem:
    return Problem(503, "the database is temporarily unavailable", headers={"Retry-After": "5"})


class ThreadedDB:
    def __init__(self, engine: Engine, *, limit: int, timeout: float) -> None:
        self.engine = engine
        self.limiter = anyio.CapacityLimiter(limit)
        self.timeout = timeout

    async def run(self, query: Callable[[Connection], T]) -> T:
        """`query` on a pooled connection in a worker thread; 503 when the database is down."""

        def work() -> T:
            with self.engine.connect() as conn:
                return query(conn)

        try:
            with anyio.fail_after(self.timeout * 2):
                return await anyio.to_thread.run_sync(work, limiter=self.limiter)
        except DB_ERRORS as exc:
            down = isinstance(exc, UNAVAILABLE_ERRORS) or (
                isinstance(exc, sqlalchemy.exc.DBAPIError) and exc.connection_invalidated
            )
            if not down:
                raise
            log.error("the database is unavailable: %s", type(exc).__name__)
            raise unavailable() from None
