"""The dashboard's Redis commands, pipelined: every request's MGET shares one connection.

redis-py's asyncio client checks a connection out of its pool per command (a lock, a retry
wrapper, a `send` system call each), ≈ 57 µs of CPU per MGET at 64 concurrent requests here;
on one pipelined connection whose writes are gathered once per event-loop turn, with hiredis
parsing the replies, it is ≈ 20 µs (docs/PERFORMANCE.md). Redis answers a connection's
commands in order, so replies are matched to requests first in, first out; a request whose
deadline passed simply drops its reply when it comes.

Only `MGET` and script calls (the refill) are offered, for plain TCP URLs (AUTH and SELECT from the URL are sent on
connect). TLS and unix-socket URLs keep using redis-py (`open_reader`). A connection that
received nothing while a request waited out its deadline is closed (every waiter on it
fails), and the next request opens a new one; errors are redis-py's exception types, so the
dashboard's breaker treats them alike.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import deque
from collections.abc import Sequence
from typing import Any, cast

import hiredis
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from overnight_pipeline.storage.cache import MGetReader


def command(*args: bytes) -> bytes:
    """One RESP command."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        parts.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(parts)


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, int | float):
        return repr(value).encode()
    raise TypeError(f"cannot send {type(value).__name__} to Redis")


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.reader = hiredis.Reader()
        self.waiters: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.outgoing: list[bytes] = []
        self.closed = False
        self.received = 0  # data_received calls so far
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not `asyncio.Transport` subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.received += 1
        self.reader.feed(data)
        while True:
            try:
                reply = self.reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(RedisConnectionError(f"Redis protocol error: {exc}"))
                return
            if reply is False:
                return
            if not self.waiters:  # a reply nobody asked for: the stream is out of step
                self.abort(RedisConnectionError("unexpected reply from Redis"))
                return
            waiter = self.waiters.popleft()
            if waiter.done():  # its request gave up (deadline); the reply is dropped
                continue
            if isinstance(reply, hiredis.ReplyError):
                waiter.set_exception(ResponseError(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        error = RedisConnectionError(f"Redis connection lost: {exc or 'closed by the server'}")
        self._fail_all(error)

    def abort(self, error: Exception) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()
        self._fail_all(error)

    def _fail_all(self, error: Exception) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(error)

    def send(self, packed: bytes) -> asyncio.Future[Any]:
        if self.closed or self.transport is None:
            raise RedisConnectionError("Redis connection closed")
        if not self.outgoing:
            # Gather this loop turn's commands into one write.
            self.loop.call_soon(self._flush)
        self.outgoing.append(packed)
        waiter: asyncio.Future[Any] = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def _flush(self) -> None:
        data, self.outgoing = b"".join(self.outgoing), []
        if not self.closed and self.transport is not None:
            self.transport.write(data)


class RedisMux:
    """`mget` over one pipelined connection (opened on first use, reopened after a loss)."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        connect_timeout: float | None = None,
        stuck_after: float = 0.1,
    ) -> None:
        self.host, self.port, self.db = host, port, db
        self.stuck_after = stuck_after
        self.username, self.password = username, password
        self.connect_timeout = connect_timeout
        self._conn: _Connection | None = None
        self._opening: asyncio.Future[_Connection] | None = None
        self._shas: dict[str, bytes] = {}

    async def mget(self, keys: Sequence[str]) -> list[Any]:
        reply: list[Any] = await self.call(b"MGET", *(k.encode() for k in keys))
        return reply

    async def eval_script(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA of `script`; EVAL when Redis does not have it (its script cache is
        empty after a restart or SCRIPT FLUSH), which also loads it."""
        sha = self._shas.get(script)
        if sha is None:
            sha = self._shas[script] = hashlib.sha1(script.encode()).hexdigest().encode()
        tail = [str(len(keys)).encode(), *(k.encode() for k in keys), *map(_arg, args)]
        try:
            return await self.call(b"EVALSHA", sha, *tail)
        except ResponseError as exc:
            if not str(exc).startswith("NOSCRIPT"):
                raise
        return await self.call(b"EVAL", script.encode(), *tail)

    async def call(self, *args: bytes) -> Any:
        """One command; its reply (an error reply raises `ResponseError`)."""
        conn = self._conn
        if conn is None or conn.closed:
            conn = await self._connection()
        waiter = conn.send(command(*args))
        seen, sent_at = conn.received, conn.loop.time()
        try:
            return await waiter
        except asyncio.CancelledError:
            if conn.received == seen and conn.loop.time() - sent_at >= self.stuck_after:
                # Nothing at all came back while this request waited out its deadline: the
                # connection (or Redis) is stuck; drop it so the next request starts afresh.
                conn.abort(RedisConnectionError("Redis did not answer in time"))
            raise

    async def _connection(self) -> _Connection:
        if self._opening is None:
            opening = asyncio.ensure_future(self._open())
            opening.add_done_callback(self._opened)
            self._opening = opening
        return await asyncio.shield(self._opening)

    def _opened(self, opening: asyncio.Future[_Connection]) -> None:
        self._opening = None
        if not opening.cancelled() and opening.exception() is None:
            self._conn = opening.result()

    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await loop.create_connection(_Connection, self.host, self.port)
                setup = []
                if self.password is not None:
                    auth = (self.username, self.password) if self.username else (self.password,)
                    setup.append(conn.send(command(b"AUTH", *(a.encode() for a in auth))))
                if self.db:
                    setup.append(conn.send(command(b"SELECT", str(self.db).encode())))
                await asyncio.gather(*setup)
        except BaseException as exc:
            if conn is not None:
                conn.abort(RedisConnectionError("setting up the connection failed"))
            if isinstance(exc, OSError | TimeoutError):
                raise RedisConnectionError(f"cannot connect to Redis: {exc!r}") from None
            raise
        return conn

    async def aclose(self) -> None:
        if self._conn is not None and not self._conn.closed:
            self._conn.abort(RedisConnectionError("closed"))
        self._conn = None


def open_reader(client: aioredis.Redis, *, connect_timeout: float | None) -> MGetReader:
    """A `RedisMux` for the client's plain TCP URL; the client itself for TLS or sockets."""
    pool = client.connection_pool
    if pool.connection_class is not aioredis.Connection:
        return client
    kw = pool.connection_kwargs
    return RedisMux(
        kw.get("host", "localhost"),
        int(kw.get("port", 6379)),
        db=int(kw.get("db", 0) or 0),
        username=kw.get("username"),
        password=kw.get("password"),
        connect_timeout=connect_timeout,
    )
