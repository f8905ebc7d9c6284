"""The cache miss's database read, batched: concurrent misses share one query.

Each miss needs the user's newest `recommendations` row. One query per miss spent more
CPU on the protocol and the thread hop than on the row, in this process and in PostgreSQL
(a backend round trip each), on the same two cores (docs/PERFORMANCE.md). Here the misses
that arrive while earlier queries run are gathered into the next one, run on the
SQLAlchemy engine in the app's bounded threadpool (`ThreadedDB`): on PostgreSQL
`WHERE user_id = ANY(...)` with `DISTINCT ON (user_id)` in the order of
`storage.queries.newest_recommendation` (latest market date, then generation time), so every
user gets exactly the row that query returns (tested); on SQLite that query per user. At
most `concurrency` such queries run at once; an idle server sends a lone miss at once,
without waiting.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy import Connection, any_, bindparam, select
from sqlalchemy.dialects import postgresql

from dashboard_api.db import ThreadedDB
from overnight_pipeline.storage.models import recommendations_table
from overnight_pipeline.storage.queries import (
    NEWEST_COLUMNS,
    PersistedRecommendation,
    newest_recommendation,
    persisted_from_row,
)

_rec = recommendations_table.c
_QUERY = (
    select(*NEWEST_COLUMNS)
    .where(_rec.user_id == any_(bindparam("user_ids", type_=postgresql.ARRAY(_rec.user_id.type))))
    .ext(postgresql.distinct_on(_rec.user_id))
    .order_by(_rec.user_id, _rec.market_date.desc(), _rec.generated_at.desc())
)

Waiters = dict[uuid.UUID, list[asyncio.Future[PersistedRecommendation | None]]]


def newest_rows(
    conn: Connection, user_ids: list[uuid.UUID]
) -> dict[uuid.UUID, PersistedRecommendation]:
    """Each user's newest row (users without one are absent): one query on PostgreSQL."""
    if conn.dialect.name != "postgresql":
        found = {u: newest_recommendation(conn, user_id=u) for u in user_ids}
        return {u: row for u, row in found.items() if row is not None}
    rows = conn.execute(_QUERY, {"user_ids": user_ids})
    return {row[0]: persisted_from_row(row) for row in rows}


class NewestRows:
    def __init__(self, db: ThreadedDB, *, concurrency: int = 4, max_batch: int = 128) -> None:
        self.db = db
        self.concurrency = concurrency
        self.max_batch = max_batch
        self._pending: Waiters = {}
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, user_id: uuid.UUID) -> PersistedRecommendation | None:
        """The user's newest row, None when there is none; `db.run`'s 503 propagates."""
        waiter: asyncio.Future[PersistedRecommendation | None] = (
            asyncio.get_running_loop().create_future()
        )
        self._pending.setdefault(user_id, []).append(waiter)
        if self._running < self.concurrency:
            self._start()
        return await waiter

    def _start(self) -> None:
        batch: Waiters = {}
        self._take(batch)
        self._running += 1
        task = asyncio.ensure_future(self._run(batch))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _take(self, batch: Waiters) -> None:
        while self._pending and len(batch) < self.max_batch:
            user, waiters = self._pending.popitem()
            # The same user may ask again while the batch waits: one row, both answered.
            batch.setdefault(user, []).extend(waiters)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._running -= 1
        if self._pending and self._running < self.concurrency:
            self._start()

    async def _run(self, batch: Waiters) -> None:
        # Yield once: the misses of this event-loop turn join the batch.
        await asyncio.sleep(0)
        self._take(batch)
        users = list(batch)
        try:
            found = await self.db.run(lambda conn: newest_rows(conn, users))
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            for waiters in batch.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        for user, waiters in batch.items():
            row = found.get(user)
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(row)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
