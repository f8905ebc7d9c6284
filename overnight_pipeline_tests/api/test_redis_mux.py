"""The pipelined MGET reader of the cache hit: right answers in order, under both event
loops the server may run (uvicorn serves with uvloop; TestClient runs asyncio)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from dashboard_api.redis_mux import RedisMux, open_reader
from overnight_pipeline_tests.api.conftest import REDIS_URL
from overnight_pipeline_tests.api.netfaults import black_hole, closed_port, freezable_proxy

Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Run:
    if request.param == "uvloop":
        return uvloop.run
    return asyncio.run


@pytest.fixture
def values(sync_redis: redis.Redis, redis_prefix: str) -> Iterator[dict[str, bytes]]:
    found = {f"{redis_prefix}k{i}": f"value {i} ".encode() * (i % 7 * 200 + 1) for i in range(300)}
    sync_redis.mset(found)  # type: ignore[arg-type]
    yield found


def test_concurrent_mgets_each_get_their_own_keys(run: Run, values: dict[str, bytes]) -> None:
    keys = list(values)

    async def main() -> None:
        mux = open_reader(aioredis.Redis.from_url(REDIS_URL), connect_timeout=1)
        assert isinstance(mux, RedisMux)
        asks = [[keys[i], f"missing:{uuid.uuid4()}", keys[(i * 7) % len(keys)]] for i in range(300)]
        got = await asyncio.gather(*(mux.mget(ask) for ask in asks))
        for ask, reply in zip(asks, got, strict=True):
            assert reply == [values[ask[0]], None, values[ask[2]]]
        # A request given up before its reply came leaves the others in step.
        first = asyncio.ensure_future(mux.mget([keys[0]]))
        second = asyncio.ensure_future(mux.mget([keys[1]]))
        await asyncio.sleep(0)
        first.cancel()
        assert await second == [values[keys[1]]]
        assert await mux.mget([keys[2]]) == [values[keys[2]]]
        await mux.aclose()

    run(main())


def test_the_url_database_is_selected(run: Run, sync_redis: redis.Redis, redis_prefix: str) -> None:
    other = redis.Redis.from_url("redis://127.0.0.1:6379/3")
    key = f"{redis_prefix}in-db-3"
    other.set(key, b"three", ex=60)
    try:

        async def main() -> list[Any]:
            mux = open_reader(
                aioredis.Redis.from_url("redis://127.0.0.1:6379/3"), connect_timeout=1
            )
            try:
                return await mux.mget([key])
            finally:
                await mux.aclose()  # type: ignore[attr-defined]

        assert run(main()) == [b"three"]
        assert sync_redis.get(key) is None
    finally:
        other.delete(key)
        other.close()


def test_unreachable_redis_is_a_connection_error(run: Run) -> None:
    async def refused() -> None:
        mux = RedisMux("127.0.0.1", closed_port(), connect_timeout=0.2)
        with pytest.raises(RedisConnectionError):
            await mux.mget(["x"])

    run(refused())
    with black_hole() as port:

        async def silent() -> None:
            mux = RedisMux("127.0.0.1", port, connect_timeout=0.2)
            for _ in range(3):
                with pytest.raises((RedisConnectionError, TimeoutError)):
                    async with asyncio.timeout(0.3):
                        await mux.mget(["x"])
            await mux.aclose()

        run(silent())


def test_a_stuck_connection_is_dropped_and_the_next_one_works(
    run: Run, values: dict[str, bytes]
) -> None:
    key = next(iter(values))
    with freezable_proxy() as proxy:

        async def main() -> None:
            mux = RedisMux("127.0.0.1", proxy.port, connect_timeout=0.5, stuck_after=0.1)
            assert await mux.mget([key]) == [values[key]]
            proxy.freeze()
            waiting = [asyncio.ensure_future(mux.mget([key])) for _ in range(5)]
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.3):
                    await mux.mget([key])
            # The stuck connection was dropped: everyone still waiting on it failed.
            for task in waiting:
                with pytest.raises(RedisConnectionError):
                    await task
            proxy.thaw()
            assert await mux.mget([key]) == [values[key]]
            await mux.aclose()

        run(main())


def test_scripts_run_whether_or_not_redis_has_them_loaded(run: Run, redis_prefix: str) -> None:
    # A script text Redis has never seen: the first EVALSHA is NOSCRIPT, then EVAL loads it.
    script = f"-- {uuid.uuid4()}\nreturn {{KEYS[1], ARGV[1], ARGV[2]}}"
    failing = f"-- {uuid.uuid4()}\nreturn redis.error_reply('ERR nope')"

    async def main() -> None:
        mux = RedisMux("127.0.0.1", 6379, connect_timeout=1)
        for n in range(3):
            got = await mux.eval_script(script, [f"{redis_prefix}k"], [b"raw", n])
            assert got == [f"{redis_prefix}k".encode(), b"raw", str(n).encode()]
        with pytest.raises(ResponseError, match="nope"):
            await mux.eval_script(failing, [], [])
        assert await mux.mget([f"{redis_prefix}nothing"]) == [None]  # still in step
        await mux.aclose()

    run(main())
