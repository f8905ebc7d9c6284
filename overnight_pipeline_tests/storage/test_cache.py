"""The Redis cache store against the real Redis on 127.0.0.1:6379.

Every test works under its own random key prefix, refuses to start when that namespace is
not empty, and deletes its keys afterwards; nothing here flushes the shared server.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import threading
import tracemalloc
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from overnight_pipeline.core.payloads import InvalidDocument
from overnight_pipeline.storage.cache import (
    _evalsha,
    get_entry,
    read_entry,
    refill_entry,
    remaining_ttl,
    write_entries,
)
from overnight_pipeline.storage.cache_entries import (
    VERSION_LENGTH,
    CachedEntry,
    CacheEntry,
    entry_version,
    portfolio_key,
    recs_key,
    version_key,
)
from overnight_pipeline.storage.cache_validation import (
    MEMO_BYTES_PER_RAW_BYTE,
    MEMO_ENTRY_OVERHEAD,
    ValidatedEntries,
    validate_entry,
)
from overnight_pipeline_tests.support.stored_results import planner

REDIS_URL = "redis://127.0.0.1:6379/0"
T0 = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


def _drop(client: redis.Redis, pattern: str) -> None:
    keys = list(client.scan_iter(match=pattern, count=1000))
    if keys:
        client.delete(*keys)


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


@pytest.fixture
def prefix(client: redis.Redis) -> Iterator[str]:
    ns = f"test:cache:{uuid.uuid4().hex[:12]}:"
    if next(client.scan_iter(match=ns + "*", count=1000), None) is not None:
        pytest.fail(f"refusing to run: Redis namespace {ns!r} is not empty")
    yield ns
    _drop(client, ns + "*")


def entry(
    user: uuid.UUID,
    market_date: date,
    generated_at: datetime,
    tag: str = "a",
    total: str | None = "1000.00",
) -> CacheEntry:
    return CacheEntry(
        user_id=user,
        market_date=market_date,
        generated_at=generated_at,
        recs_json=f'{{"tag":"{tag}","userId":"{user}"}}'.encode(),
        portfolio_json=f'{{"tag":"{tag}"}}'.encode(),
        total_investable=None if total is None else Decimal(total),
    )


def tag_of(client: redis.Redis, user: uuid.UUID, prefix: str) -> str | None:
    found = get_entry(client, user, prefix=prefix)
    return None if found is None else found.recs_json.decode().split('"')[3]


def test_write_sets_both_documents_and_the_version_with_a_day_of_ttl(
    client: redis.Redis, prefix: str
) -> None:
    user = uuid.uuid4()
    report = write_entries(client, [entry(user, date(2026, 11, 30), T0)], prefix=prefix)
    assert report.written == 1 and report.kept_newer == 0
    assert client.get(f"{prefix}recs:{user}") == f'{{"tag":"a","userId":"{user}"}}'.encode()
    assert client.get(f"{prefix}portfolio:{user}") == b'{"tag":"a"}'
    assert client.get(f"{prefix}recs_version:{user}") == (
        b"2026-11-30|2026-11-30T09:30:00.000000Z|1000.00"
    )
    for key in (recs_key(user, prefix), portfolio_key(user, prefix), version_key(user, prefix)):
        assert 86_390 <= client.ttl(key) <= 86_400
    found = get_entry(client, user, prefix=prefix)
    assert found is not None
    assert found.version == "2026-11-30|2026-11-30T09:30:00.000000Z"
    assert found.total_investable == "1000.00"


def test_backfill_never_overwrites_newer_cache(client: redis.Redis, prefix: str) -> None:
    """An older market date generated later (a backfill) leaves the fresher entry alone."""
    user = uuid.uuid4()
    write_entries(client, [entry(user, date(2026, 11, 30), T0, "nov30")], prefix=prefix)
    backfill = entry(user, date(2026, 11, 27), T0 + timedelta(hours=5), "nov27")
    report = write_entries(client, [backfill], prefix=prefix)
    assert report.written == 0 and report.kept_newer == 1
    assert tag_of(client, user, prefix) == "nov30"
    assert client.get(f"{prefix}portfolio:{user}") == b'{"tag":"nov30"}'


def test_same_date_regenerated_later_replaces_and_earlier_does_not(
    client: redis.Redis, prefix: str
) -> None:
    user = uuid.uuid4()
    day = date(2026, 11, 30)
    write_entries(client, [entry(user, day, T0, "first")], prefix=prefix)
    assert (
        write_entries(
            client, [entry(user, day, T0 + timedelta(microseconds=1), "rerun")], prefix=prefix
        ).written
        == 1
    )
    assert tag_of(client, user, prefix) == "rerun"
    assert write_entries(client, [entry(user, day, T0, "late")], prefix=prefix).kept_newer == 1
    assert tag_of(client, user, prefix) == "rerun"
    # Equal version: written again (a retried step refreshes its own entry and its TTL).
    same = entry(user, day, T0 + timedelta(microseconds=1), "retry")
    assert write_entries(client, [same], prefix=prefix).written == 1
    assert tag_of(client, user, prefix) == "retry"


def test_newer_market_date_replaces_even_when_generated_earlier(
    client: redis.Redis, prefix: str
) -> None:
    user = uuid.uuid4()
    write_entries(client, [entry(user, date(2026, 11, 27), T0, "old")], prefix=prefix)
    newer = entry(user, date(2026, 11, 30), T0 - timedelta(hours=1), "new")
    assert write_entries(client, [newer], prefix=prefix).written == 1
    assert tag_of(client, user, prefix) == "new"


def test_versions_compare_by_time_across_timezones(client: redis.Redis, prefix: str) -> None:
    """generated_at is normalised to UTC, so an offset never reorders two entries."""
    user = uuid.uuid4()
    tokyo = T0.astimezone(ZoneInfo("Asia/Tokyo"))
    assert entry_version(date(2026, 11, 30), tokyo) == entry_version(date(2026, 11, 30), T0)
    write_entries(
        client, [entry(user, date(2026, 11, 30), T0 + timedelta(seconds=1), "utc")], prefix=prefix
    )
    assert (
        write_entries(
            client, [entry(user, date(2026, 11, 30), tokyo, "tokyo")], prefix=prefix
        ).kept_newer
        == 1
    )


class CountingConnection(redis.Connection):
    sends = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sends += 1
        super().send_packed_command(command, check_health)


def test_writes_are_pipelined_one_round_trip_per_chunk(prefix: str) -> None:
    pool = redis.ConnectionPool.from_url(REDIS_URL, connection_class=CountingConnection)
    counting = redis.Redis(connection_pool=pool)
    users = [uuid.uuid4() for _ in range(2_500)]
    counting.ping()  # connect first: the handshake's own commands are not the writer's
    CountingConnection.sends = 0
    report = write_entries(
        counting, (entry(u, date(2026, 11, 30), T0) for u in users), prefix=prefix, chunk=1_000
    )
    assert report.written == 2_500
    # One SCRIPT LOAD, then one pipelined send per chunk of 1,000.
    assert CountingConnection.sends == 1 + 3
    older = [entry(u, date(2026, 11, 29), T0) for u in users[:700]]
    mixed = older + [entry(uuid.uuid4(), date(2026, 11, 30), T0) for _ in range(300)]
    assert write_entries(counting, mixed, prefix=prefix) == type(report)(
        written=300, kept_newer=700
    )
    counting.close()
    pool.disconnect()


def test_bad_arguments_are_refused_by_name(client: redis.Redis, prefix: str) -> None:
    user = uuid.uuid4()
    naive = datetime(2026, 11, 30, 9, 30)
    with pytest.raises(ValueError, match=r"generated_at=.*naive"):
        write_entries(client, [entry(user, date(2026, 11, 30), naive)], prefix=prefix)
    with pytest.raises(ValueError, match="ttl_seconds must be a positive integer, got 0"):
        write_entries(client, [], prefix=prefix, ttl_seconds=0)
    with pytest.raises(ValueError, match="chunk must be a positive integer, got -1"):
        write_entries(client, [], prefix=prefix, chunk=-1)
    assert len(entry_version(date(2026, 1, 2), T0)) == VERSION_LENGTH


def test_redis_down_fails_the_write_visibly() -> None:
    dead = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    with pytest.raises(redis.ConnectionError):
        write_entries(dead, [entry(uuid.uuid4(), date(2026, 11, 30), T0)])


def test_async_read_needs_all_three_keys(client: redis.Redis, prefix: str) -> None:
    user = uuid.uuid4()

    async def read() -> Any:
        aclient = aioredis.Redis.from_url(REDIS_URL)
        try:
            return await read_entry(aclient, user, prefix=prefix)
        finally:
            await aclient.aclose()

    assert asyncio.run(read()) is None
    write_entries(client, [entry(user, date(2026, 11, 30), T0, total=None)], prefix=prefix)
    found = asyncio.run(read())
    assert found is not None and found.total_investable is None
    assert found.recs_json.startswith(b'{"tag":"a"') and found.portfolio_json == b'{"tag":"a"}'
    client.delete(portfolio_key(user, prefix))
    assert asyncio.run(read()) is None


def test_refill_lives_for_what_remains_of_the_day_and_never_over_newer(
    client: redis.Redis, prefix: str
) -> None:
    user, other, old = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    now = T0 + timedelta(hours=3)

    async def refill(e: CacheEntry) -> bool:
        aclient = aioredis.Redis.from_url(REDIS_URL)
        try:
            return await refill_entry(aclient, e, prefix=prefix, now=now)
        finally:
            await aclient.aclose()

    assert asyncio.run(refill(entry(user, date(2026, 11, 30), T0))) is True
    assert 75_590 <= client.ttl(recs_key(user, prefix)) <= 75_600  # 24 h - 3 h
    assert 75_590 <= client.ttl(version_key(user, prefix)) <= 75_600
    # A day-old document is not cached at all.
    assert asyncio.run(refill(entry(old, date(2026, 11, 29), T0 - timedelta(days=1)))) is False
    assert get_entry(client, old, prefix=prefix) is None
    # A newer entry written meanwhile by the pipeline stays.
    write_entries(client, [entry(other, date(2026, 12, 1), T0, "pipeline")], prefix=prefix)
    assert asyncio.run(refill(entry(other, date(2026, 11, 30), T0, "refill"))) is False
    assert tag_of(client, other, prefix) == "pipeline"
    assert remaining_ttl(T0, now=T0 + timedelta(hours=24)) == 0


def test_empty_prefix_uses_the_contract_key_names(client: redis.Redis) -> None:
    user = uuid.uuid4()  # random: cannot collide with a real user's keys
    keys = [f"recs:{user}", f"portfolio:{user}", f"recs_version:{user}"]
    assert client.exists(*keys) == 0
    try:
        write_entries(client, [entry(user, date(2026, 11, 30), T0)])
        assert client.exists(*keys) == 3
    finally:
        client.delete(*keys)


def test_racing_writers_end_with_the_newest_entry(prefix: str) -> None:
    """A pipeline run and a backfill writing the same users at once: the newer always wins."""
    users = [uuid.uuid4() for _ in range(50)]
    newer = [entry(u, date(2026, 11, 30), T0, "new") for u in users]
    older = [entry(u, date(2026, 11, 29), T0 + timedelta(hours=9), "old") for u in users]

    def writer(entries: list[CacheEntry]) -> None:
        c = redis.Redis.from_url(REDIS_URL)
        for _ in range(20):
            write_entries(c, entries, prefix=prefix, chunk=7)
        c.close()

    threads = [threading.Thread(target=writer, args=(e,)) for e in (older, newer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check = redis.Redis.from_url(REDIS_URL)
    assert {tag_of(check, u, prefix) for u in users} == {"new"}
    check.close()


def _refill(e: CacheEntry, prefix: str, now: datetime, replacing: str | None = None) -> bool:
    async def run() -> bool:
        aclient = aioredis.Redis.from_url(REDIS_URL)
        try:
            return await refill_entry(aclient, e, prefix=prefix, now=now, replacing=replacing)
        finally:
            await aclient.aclose()

    return asyncio.run(run())


@pytest.mark.parametrize(
    "sidecar",
    [
        b"garbage",
        b"zzzz-zz-zz|zzzz",
        b"2099-01-01|2099-01-01T00:00:00.000000Z|1.00",
        b"2026-11-30|2099-01-01T00:00:00.000000Z|1.00",
        b"2099-01-01|2026-11-30T09:30:00.000000Z|1",
        b"\xff" * 50,
    ],
)
def test_a_garbage_or_future_dated_version_key_never_blocks_a_write(
    client: redis.Redis, prefix: str, sidecar: bytes
) -> None:
    """The pipeline and the refill both write over a version no honest writer could hold."""
    user, other = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    for u in (user, other):
        client.set(recs_key(u, prefix), b'{"tag":"planted"}')
        client.set(portfolio_key(u, prefix), b'{"tag":"planted"}')
        client.set(version_key(u, prefix), sidecar)
    report = write_entries(client, [entry(user, now.date(), now, "pipeline")], prefix=prefix)
    assert report.written == 1 and tag_of(client, user, prefix) == "pipeline"
    assert _refill(entry(other, now.date(), now - timedelta(hours=1), "refill"), prefix, now)
    assert tag_of(client, other, prefix) == "refill"


def test_a_version_key_without_its_documents_or_of_another_type_never_blocks(
    client: redis.Redis, prefix: str
) -> None:
    user, other = uuid.uuid4(), uuid.uuid4()
    now = datetime.now(UTC)
    client.set(version_key(user, prefix), entry_version(now.date(), now) + "|1.00")
    client.hset(version_key(other, prefix), "x", "1")
    older = now - timedelta(hours=2)
    report = write_entries(
        client,
        [entry(user, older.date(), older), entry(other, older.date(), older)],
        prefix=prefix,
    )
    assert report.written == 2


def test_the_refill_replaces_exactly_the_entry_the_reader_rejected(
    client: redis.Redis, prefix: str
) -> None:
    """A rejected entry whose version looks newer goes; one written since it was read stays."""
    user = uuid.uuid4()
    now = datetime.now(UTC)
    newer = now - timedelta(minutes=5)
    write_entries(client, [entry(user, newer.date(), newer, "bad")], prefix=prefix)
    seen = get_entry(client, user, prefix=prefix)
    assert seen is not None
    fallback = entry(user, newer.date() - timedelta(days=1), now - timedelta(hours=3), "pg")
    # Without the digest, never over the (plausible, newer) version ...
    assert not _refill(fallback, prefix, now)
    assert tag_of(client, user, prefix) == "bad"
    # ... with the digest of what the reader rejected, whatever the version says.
    assert _refill(fallback, prefix, now, replacing=seen.digest)
    assert tag_of(client, user, prefix) == "pg"


def test_a_newer_valid_entry_written_after_the_read_is_never_replaced_by_the_refill(
    client: redis.Redis, prefix: str
) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    day = now - timedelta(hours=2)
    write_entries(client, [entry(user, day.date(), day, "bad")], prefix=prefix)
    seen = get_entry(client, user, prefix=prefix)
    assert seen is not None
    # The pipeline writes the next market date between the read and the refill.
    fresh = now - timedelta(minutes=1)
    write_entries(
        client, [entry(user, day.date() + timedelta(days=1), fresh, "pipeline")], prefix=prefix
    )
    older = entry(user, day.date(), day, "pg")
    assert not _refill(older, prefix, now, replacing=seen.digest)
    assert tag_of(client, user, prefix) == "pipeline"
    # And an older partition's write (a backfill) never replaces it either.
    report = write_entries(
        client, [entry(user, day.date() - timedelta(days=3), now, "backfill")], prefix=prefix
    )
    assert report.kept_newer == 1 and tag_of(client, user, prefix) == "pipeline"


def test_a_rejected_entry_with_nothing_young_enough_to_cache_is_evicted_unless_changed(
    client: redis.Redis, prefix: str
) -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)
    write_entries(client, [entry(user, now.date(), now, "bad")], prefix=prefix)
    seen = get_entry(client, user, prefix=prefix)
    assert seen is not None
    day_old = entry(user, now.date() - timedelta(days=2), now - timedelta(days=2), "pg")
    write_entries(client, [entry(user, now.date(), now, "rewritten")], prefix=prefix)
    assert not _refill(day_old, prefix, now, replacing=seen.digest)
    assert tag_of(client, user, prefix) == "rewritten"  # changed since the read: kept
    seen = get_entry(client, user, prefix=prefix)
    assert seen is not None
    assert not _refill(day_old, prefix, now, replacing=seen.digest)
    assert get_entry(client, user, prefix=prefix) is None
    assert client.exists(recs_key(user, prefix), version_key(user, prefix)) == 0


# The memo of validated entries -----------------------------------------------------------


def _validated_entries(count: int) -> list[tuple[str, CachedEntry]]:
    now = datetime.now(UTC)
    out = []
    for seed in range(count):
        p = planner(uuid.uuid4(), generated_at=now - timedelta(hours=1), seed=seed)
        version = entry_version(p.market_date, p.generated_at)
        sidecar = f"{version}|20000.0000".encode()
        out.append(
            (
                str(p.user_id),
                CachedEntry(p.recs_json, p.portfolio_json, version, "20000.0000", sidecar),
            )
        )
    return out


def _cost(entry: CachedEntry) -> int:
    raw = len(entry.recs_json) + len(entry.portfolio_json) + len(entry.sidecar)
    return raw * MEMO_BYTES_PER_RAW_BYTE + MEMO_ENTRY_OVERHEAD


def test_the_memo_of_validated_entries_stays_within_its_bound_and_keeps_the_recent_ones() -> None:
    entries = _validated_entries(40)
    bound = 10 * _cost(entries[0][1])
    memo = ValidatedEntries(bound)
    now = datetime.now(UTC)
    for user, e in entries:
        validate_entry(e, user, now=now, memo=memo)
        assert memo.size <= bound
    assert 8 <= len(memo) <= 10
    assert all(memo.get(e) is None for _, e in entries[:30])
    assert all(memo.get(e) is not None for _, e in entries[-8:])
    # Too large for one entry: validated on every read, never held.
    small = ValidatedEntries(bound, max_entry_bytes=1_000)
    validate_entry(entries[0][1], entries[0][0], now=now, memo=small)
    assert len(small) == 0 and small.size == 0


def test_the_memo_holds_only_what_passed_and_only_these_exact_bytes() -> None:
    (user, good), (other, _) = _validated_entries(2)
    memo = ValidatedEntries()
    now = datetime.now(UTC)
    bad = CachedEntry(
        good.recs_json.replace(b'"USD"', b'"USX"', 1),
        good.portfolio_json,
        good.version,
        "20000.0000",
        good.sidecar,
    )
    with pytest.raises(InvalidDocument):
        validate_entry(bad, user, now=now, memo=memo)
    assert len(memo) == 0
    validate_entry(good, user, now=now, memo=memo)
    assert memo.get(good) is not None and memo.get(bad) is None
    # Another user asking with the same bytes fails the owner check, memo or not.
    with pytest.raises(InvalidDocument, match="another user's"):
        validate_entry(good, other, now=now, memo=memo)


def test_the_memos_estimate_covers_what_its_entries_really_take() -> None:
    entries = _validated_entries(200)
    memo = ValidatedEntries()
    now = datetime.now(UTC)
    copies = [
        (
            u,
            CachedEntry(
                bytes(bytearray(e.recs_json)),
                bytes(bytearray(e.portfolio_json)),
                e.version,
                e.total_investable,
                bytes(bytearray(e.sidecar)),
            ),
        )
        for u, e in entries
    ]
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for u, e in copies:
            validate_entry(e, u, now=now, memo=memo)
        del copies, e
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert len(memo) == 200
    assert held <= memo.size, f"{held:,} B really held against {memo.size:,} B estimated"


def test_a_script_missing_from_redis_is_loaded_and_run(client: redis.Redis) -> None:
    # A script no Redis has seen, as after SCRIPT FLUSH or a restart (nothing is flushed here).
    script = f"-- {uuid.uuid4()}\nreturn ARGV[1] .. KEYS[1]"
    sha = hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()
    assert client.script_exists(sha) == [False]

    async def run() -> Any:
        aclient = aioredis.Redis.from_url(REDIS_URL)
        try:
            return await _evalsha(aclient, script, ["k"], ["v"])
        finally:
            await aclient.aclose()

    assert asyncio.run(run()) == b"vk"
    assert client.script_exists(sha) == [True]
