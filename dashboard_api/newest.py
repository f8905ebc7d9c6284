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
without waiting. The same statement reads when each user's inputs last changed
(`user_changes`, one index probe per user, after `DISTINCT ON` has kept one row each; users
without a row ask `storage.freshness.newest_changes`).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, any_, bindparam, func, select
from sqlalchemy.dialects import postgresql

from dashboard_api.db import ThreadedDB
from overnight_pipeline.storage.freshness import newest_changes
from overnight_pipeline.storage.models import recommendations_table, user_changes_table
from overnight_pipeline.storage.queries import (
    NEWEST_COLUMNS,
    PersistedRecommendation,
    newest_recommendation,
    persisted_from_row,
)

_rec = recommendations_table.c
_NEWEST = (
    select(*NEWEST_COLUMNS)
    .where(_rec.user_id == any_(bindparam("user_ids", type_=postgresql.ARRAY(_rec.user_id.type))))
    .ext(postgresql.distinct_on(_rec.user_id))
    .order_by(_rec.user_id, _rec.market_date.desc(), _rec.generated_at.desc())
    .subquery("newest")
)
_uc = user_changes_table.c
# Outside the DISTINCT ON: the change is looked up for the row kept, not for every row read.
_QUERY = select(
    *_NEWEST.c,
    select(func.max(_uc.changed_at)).where(_uc.user_id == _NEWEST.c.user_id).scalar_subquery(),
)


@dataclass(frozen=True)
class Newest:
    """A user's newest row (None: nothing computed yet) and when their inputs last changed."""

    row: PersistedRecommendation | None
    changed_at: datetime | None


Waiters = dict[uuid.UUID, list[asyncio.Future[Newest]]]


def newest_rows(conn: Connection, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, Newest]:
    """Each user's newest row and last change: one statement on PostgreSQL (and one more
    for the users without a row)."""
    if conn.dialect.name != "postgresql":
        changes = newest_changes(conn, user_ids)
        return {u: Newest(newest_recommendation(conn, user_id=u), changes.get(u)) for u in user_ids}
    found = {
        row[0]: Newest(
            persisted_from_row(row[:-1]), None if row[-1] is None else row[-1].astimezone(UTC)
        )
        for row in conn.execute(_QUERY, {"user_ids": user_ids})
    }
    rest = [u for u in user_ids if u not in found]
    changes = newest_changes(conn, rest)
    found.update({u: Newest(None, changes.get(u)) for u in rest})
    return found


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
        return (await self.read(user_id)).row

    async def read(self, user_id: uuid.UUID) -> Newest:
        """The user's newest row and last change; `db.run`'s 503 propagates."""
        waiter: asyncio.Future[Newest] = asyncio.get_running_loop().create_future()
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
            newest = found[user]
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(newest)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
