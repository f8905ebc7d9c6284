"""The cache miss's database read, batched: concurrent misses share one query.

Each miss needs the user's newest `recommendations` row. One query per miss spent more
CPU on the protocol and the thread hop than on the row, in this process and in PostgreSQL
(a backend round trip each), on the same two cores (docs/PERFORMANCE.md). Here the misses
that arrive while earlier queries run are gathered into the next one
(`storage.newest.newest_rows`: one statement on PostgreSQL for the rows and the users' last
changes), run on the SQLAlchemy engine in the app's bounded threadpool (`ThreadedDB`). At
most `concurrency` such queries run at once; an idle server sends a lone miss at once,
without waiting.
"""

from __future__ import annotations

import asyncio
import uuid

from dashboard_api.db import ThreadedDB
from overnight_pipeline.storage.newest import Newest, newest_rows
from overnight_pipeline.storage.queries import PersistedRecommendation

Waiters = dict[uuid.UUID, list[asyncio.Future[Newest]]]


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
