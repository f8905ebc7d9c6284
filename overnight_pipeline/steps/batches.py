"""A step's batches beside its computation: the next batch read on a reader thread, the
last ones written on writer threads, so the database works on its core while this process
computes on the other."""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TypeVar

from sqlalchemy import Connection, Engine

Write = Callable[[Connection], None]
L = TypeVar("L")


class BatchWriter:
    """Writes each batch in its own transaction on a background thread, so the database
    ingests earlier batches while this process computes the next one. Up to `in_flight`
    writes run at once, each on its own connection: PostgreSQL then spends the part of a
    core this process leaves idle (one writer kept PostgreSQL's core busy while the
    computing thread waited for it half of the time). Memory stays bounded by
    `in_flight + 1` batches. A failed write surfaces at a later `submit` or at `close`,
    and the step fails (and is retried) as a whole; batches may commit out of order, which
    the per-user resume does not mind."""

    def __init__(self, engine: Engine, *, in_flight: int = 2) -> None:
        self._engine = engine
        self._in_flight = in_flight
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="batch-writer")
        self._pending: deque[Future[None]] = deque()

    def _run(self, write: Write, then: Callable[[], None] | None) -> None:
        with self._engine.begin() as conn:
            write(conn)
        if then is not None:
            then()

    def submit(self, write: Write, then: Callable[[], None] | None = None) -> None:
        """Write in a transaction of its own; `then` (if any) runs on the same thread once
        the transaction has committed."""
        for done in [f for f in self._pending if f.done()]:
            self._pending.remove(done)
            done.result()
        while len(self._pending) >= self._in_flight:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._run, write, then))

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


def prefetched(
    chunks: Sequence[Sequence[uuid.UUID]], load: Callable[[Sequence[uuid.UUID]], L]
) -> Iterator[tuple[Sequence[uuid.UUID], L]]:
    """(chunk, load(chunk)) in order, loading the next chunk on a reader thread (its own
    connection) while the caller computes this one: the database answers the next batch's
    queries on its core while this process computes on the other."""
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-reader") as pool:
        pending = pool.submit(load, chunks[0])
        for i, chunk in enumerate(chunks):
            loaded = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(load, chunks[i + 1])
            yield chunk, loaded
