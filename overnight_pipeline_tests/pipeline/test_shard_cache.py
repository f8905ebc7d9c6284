"""The shard step writes each committed batch's cache entries itself (issue 25), and the cache
step writes only what is missing: on real PostgreSQL and Redis, with Redis down during the
shard step, entries tampered with or lost between the two steps, and a newer entry that
neither writer may replace."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import redis
from sqlalchemy import Engine

from overnight_pipeline.core.audit import CALC_COMPLETED
from overnight_pipeline.core.payloads import check_documents
from overnight_pipeline.steps.cache_warming import ShardCache, warm_cache
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.storage.cache import get_entry, write_entries
from overnight_pipeline.storage.cache_entries import CacheEntry, entry_keys, entry_version
from overnight_pipeline.storage.events import users_with_event
from overnight_pipeline.storage.results import recommendations_for
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    redis_namespace,
)
from overnight_pipeline_tests.support.priced import DAY, KW, priced_nyse_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield from priced_nyse_engine("overnight_shard_cache", users=15, seed_value=7)


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_namespace("shard-cache")


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


def calculate(engine: Engine, cache: ShardCache | None) -> tuple[uuid.UUID, Any]:
    cid = uuid.uuid4()
    report = score_and_recommend(
        engine,
        correlation_id=cid,
        calculated_at=datetime.now(UTC),
        run_id="shard-cache",
        batch_size=4,
        cache=cache,
        **KW,
    )
    assert report.users_succeeded == report.users_total > 4
    return cid, report


def test_the_shard_writes_each_batchs_entries_and_the_cache_step_only_checks(
    engine: Engine, client: redis.Redis, prefix: str
) -> None:
    cid, report = calculate(engine, ShardCache(connect=lambda: client, prefix=prefix))
    users = report.users_total
    assert (report.cached, report.cache_kept_newer, report.cache_skipped) == (users, 0, 0)

    cached = warm_cache(engine, client, day=DAY, correlation_id=cid, prefix=prefix)
    assert (cached.users, cached.written, cached.refilled, cached.kept_newer) == (
        users,
        users,
        0,
        0,
    )
    # What the shards wrote is the row's entry, and the reader accepts it.
    with engine.connect() as conn:
        rows = recommendations_for(
            conn, user_ids=[uuid.UUID(u) for u in _users(engine, cid)], day=DAY
        )
    for row in rows:
        entry = get_entry(client, row.user_id, prefix=prefix)
        assert entry is not None
        assert entry.version == entry_version(DAY, row.generated_at)
        assert entry.total_investable == format(row.total_investable, "f")
        recs, portfolio = check_documents(entry.recs_json, entry.portfolio_json, str(row.user_id))
        assert recs == row.payload and portfolio == row.portfolio


def test_redis_down_during_the_shard_step_leaves_its_entries_to_the_cache_step(
    engine: Engine, client: redis.Redis, prefix: str
) -> None:
    port = closed_port()
    dead = ShardCache(
        connect=lambda: redis.Redis(port=port, socket_connect_timeout=1), prefix=prefix
    )
    cid, report = calculate(engine, dead)
    users = report.users_total
    assert (report.cached, report.cache_skipped) == (0, users)
    assert dead.error is not None and "ConnectionError" in dead.error
    assert not list(client.scan_iter(match=prefix + "*"))

    cached = warm_cache(engine, client, day=DAY, correlation_id=cid, prefix=prefix)
    assert (cached.written, cached.refilled, cached.kept_newer) == (users, users, 0)
    assert len(list(client.scan_iter(match=prefix + "recs:*"))) == users


def test_the_cache_step_rewrites_entries_lost_or_tampered_with_after_the_shards(
    engine: Engine, client: redis.Redis, prefix: str
) -> None:
    cid, report = calculate(engine, ShardCache(connect=lambda: client, prefix=prefix))
    lost, garbled, swapped, *_ = sorted(_users(engine, cid))
    recs = entry_keys(lost, prefix)[0]
    client.delete(recs)  # a document gone, its sidecar still right
    client.set(entry_keys(garbled, prefix)[2], b"\xff not a version")
    # Another user's (valid) sidecar: a version this calculation did not write.
    client.set(entry_keys(swapped, prefix)[2], b"2026-11-26|2026-11-26T00:00:00.000000Z|1")

    cached = warm_cache(engine, client, day=DAY, correlation_id=cid, prefix=prefix)
    assert (cached.refilled, cached.written) == (3, report.users_total)
    for user in (lost, garbled, swapped):
        entry = get_entry(client, uuid.UUID(user), prefix=prefix)
        assert entry is not None and entry.version.startswith(DAY.isoformat())


def test_a_newer_entry_is_kept_by_the_shard_and_by_the_cache_step(
    engine: Engine, client: redis.Redis, prefix: str
) -> None:
    users = sorted(_users(engine, calculate(engine, None)[0]))
    newer_user = uuid.UUID(users[0])
    newer = CacheEntry(
        user_id=newer_user,
        market_date=DAY + timedelta(days=1),
        generated_at=datetime.now(UTC),
        recs_json=b'{"newer": true}',
        portfolio_json=b'{"newer": true}',
        total_investable=Decimal("1"),
    )
    assert write_entries(client, [newer], prefix=prefix).written == 1

    cid, report = calculate(engine, ShardCache(connect=lambda: client, prefix=prefix))
    assert (report.cached, report.cache_kept_newer) == (report.users_total - 1, 1)
    cached = warm_cache(engine, client, day=DAY, correlation_id=cid, prefix=prefix)
    assert (cached.written, cached.kept_newer, cached.refilled) == (report.users_total - 1, 1, 1)
    entry = get_entry(client, newer_user, prefix=prefix)
    assert entry is not None and entry.recs_json == b'{"newer": true}'


def _users(engine: Engine, cid: uuid.UUID) -> set[str]:
    with engine.connect() as conn:
        return {
            str(u) for u in users_with_event(conn, correlation_id=cid, event_type=CALC_COMPLETED)
        }
