"""The app database: the SQLAlchemy engine, used from a bounded threadpool (PostgreSQL or
the embedded SQLite; every route, the dashboard's batched cache-miss read included)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import anyio
import sqlalchemy.exc
from sqlalchemy import Connection, Engine

from dashboard_api.problems import Problem
from overnight_pipeline.storage.db import DB_ERRORS, UNAVAILABLE_ERRORS

T = TypeVar("T")
log = logging.getLogger("dashboard_api")


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
