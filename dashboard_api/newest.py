"""The cache miss's PostgreSQL read, batched: concurrent misses share one query.

Each miss needs the user's newest `recommendations` row. One query per miss spent more
CPU on the protocol than on the row, in this process (psycopg's execute) and in PostgreSQL
(a backend round trip each), on the same two cores (docs/PERFORMANCE.md). Here the misses
that arrive while earlier queries run are gathered into the next one,
`WHERE user_id = ANY(...)` with `DISTINCT ON (user_id)` in the order of
`storage.queries.newest_recommendation` (latest market date, then generation time), so every
user gets exactly the row that query returns (tested). At most `concurrency` such queries
run at once; an idle server sends a lone miss at once, without waiting.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

from psycopg_pool import AsyncConnectionPool
from sqlalchemy import any_, bindparam, select
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import psycopg as pg_psycopg

from overnight_pipeline.storage.models import recommendations_table
from overnight_pipeline.storage.queries import (
    NEWEST_COLUMNS,
    PersistedRecommendation,
    persisted_from_row,
)

_rec = recommendations_table.c
_QUERY = (
    select(*NEWEST_COLUMNS)
    .where(_rec.user_id == any_(bindparam("user_ids", type_=postgresql.ARRAY(_rec.user_id.type))))
    .ext(postgresql.distinct_on(_rec.user_id))
    .order_by(_rec.user_id, _rec.market_date.desc(), _rec.generated_at.desc())
)
_COMPILED = _QUERY.compile(dialect=pg_psycopg.dialect())  # type: ignore[no-untyped-call]
SQL = str(_COMPILED).encode()

Waiters = dict[uuid.UUID, list[asyncio.Future[PersistedRecommendation | None]]]


class NewestRows:
    def __init__(
        self,
        pool: AsyncConnectionPool[Any],
        *,
        timeout: float,
        concurrency: int = 4,
        max_batch: int = 128,
    ) -> None:
        self.pool = pool
        self.timeout = timeout
        self.concurrency = concurrency
        self.max_batch = max_batch
        self._pending: Waiters = {}
        self._running = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def get(self, user_id: uuid.UUID) -> PersistedRecommendation | None:
        """The user's newest row, None when there is none; psycopg/pool errors propagate."""
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
        try:
            async with self.pool.connection(timeout=self.timeout) as conn:
                cur = await conn.execute(SQL, {"user_ids": list(batch)}, prepare=True)
                rows = await cur.fetchall()
        except BaseException as exc:
            error = exc if isinstance(exc, Exception) else asyncio.CancelledError()
            for waiters in batch.values():
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            if not isinstance(exc, Exception):
                raise
            return
        found = {row[0]: persisted_from_row(row) for row in rows}
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
