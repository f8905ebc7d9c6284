"""Cache invalidation (`invalidate`, `invalidate_all`; BEHAVIOUR §5) against the real Redis.

Each test works under its own key prefix (`redis_namespace`), or, for the empty prefix, in a
Redis database number nobody here uses, refused unless empty; nothing is flushed.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis

from overnight_pipeline.storage.cache import get_entry, write_entries
from overnight_pipeline.storage.cache_entries import portfolio_key, recs_key, version_key
from overnight_pipeline.storage.cache_invalidation import invalidate, invalidate_all
from overnight_pipeline_tests.storage.test_cache import entry
from overnight_pipeline_tests.support.databases import REDIS_URL, redis_namespace

DAY = date(2026, 11, 30)
T0 = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)
EMPTY_PREFIX_DB = 12  # a database number no other test uses


class Recording(redis.Redis):
    """A client that remembers the name of every command it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.commands: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.commands.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


@pytest.fixture
def client() -> Iterator[Recording]:
    c = Recording.from_url(REDIS_URL)
    yield c
    c.close()


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_namespace("test:invalidate")


@pytest.fixture
def other_prefix() -> Iterator[str]:
    yield from redis_namespace("test:invalidate")


def _keys(user: uuid.UUID, prefix: str) -> list[str]:
    return [recs_key(user, prefix), portfolio_key(user, prefix), version_key(user, prefix)]


def _count(client: redis.Redis, pattern: str) -> int:
    return sum(1 for _ in client.scan_iter(match=pattern, count=1000))


def test_invalidate_removes_both_documents_of_the_user_and_nothing_else(
    client: Recording, prefix: str, other_prefix: str
) -> None:
    user, neighbour = uuid.uuid4(), uuid.uuid4()
    write_entries(client, [entry(user, DAY, T0), entry(neighbour, DAY, T0)], prefix=prefix)
    write_entries(client, [entry(user, DAY, T0)], prefix=other_prefix)
    client.set(f"{prefix}other:{user}", "x")

    report = invalidate(client, user, prefix=prefix)

    assert (report.removed, report.kept_newer) == (1, 0)
    assert client.exists(*_keys(user, prefix)) == 0
    assert get_entry(client, neighbour, prefix=prefix) is not None
    assert get_entry(client, user, prefix=other_prefix) is not None
    assert client.get(f"{prefix}other:{user}") == b"x"
    # Nothing to remove is no error.
    assert invalidate(client, user, prefix=prefix).removed == 0


def test_invalidate_keeps_an_entry_generated_after_the_cutoff(
    client: Recording, prefix: str
) -> None:
    older, newer = uuid.uuid4(), uuid.uuid4()
    write_entries(
        client,
        [entry(older, DAY, T0), entry(newer, DAY, T0 + timedelta(seconds=1))],
        prefix=prefix,
    )
    assert invalidate(client, older, prefix=prefix, generated_before=T0).removed == 1
    kept = invalidate(client, newer, prefix=prefix, generated_before=T0)
    assert (kept.removed, kept.kept_newer) == (0, 1)
    assert get_entry(client, newer, prefix=prefix) is not None
    # Without a cutoff, now: yesterday's entry goes.
    assert invalidate(client, newer, prefix=prefix).removed == 1
    assert client.exists(*_keys(newer, prefix)) == 0


def test_an_implausible_version_key_never_protects_an_entry(client: Recording, prefix: str) -> None:
    garbage, future, orphan = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    write_entries(client, [entry(garbage, DAY, T0), entry(future, DAY, T0)], prefix=prefix)
    client.set(version_key(garbage, prefix), "not a version")
    client.set(version_key(future, prefix), "2999-01-01|2999-01-01T00:00:00.000000Z|1")
    client.set(recs_key(orphan, prefix), "{}")  # a document without its version key
    for user in (garbage, future, orphan):
        assert invalidate(client, user, prefix=prefix).removed == 1
        assert client.exists(*_keys(user, prefix)) == 0


def test_invalidate_all_scans_in_batches_and_touches_only_its_prefix(
    client: Recording, prefix: str, other_prefix: str
) -> None:
    users = [uuid.uuid4() for _ in range(3000)]
    write_entries(client, [entry(u, DAY, T0) for u in users], prefix=prefix)
    write_entries(client, [entry(u, DAY, T0) for u in users[:50]], prefix=other_prefix)
    client.set(recs_key(uuid.uuid4(), prefix), "{}")  # an orphan document
    strangers = {f"{prefix}other:1": "x", f"{prefix}recsx:1": "x", f"{prefix[:-1]}recs:1": "x"}
    client.mset(strangers)
    assert _count(client, prefix + "*") == 9000 + 1 + 2
    client.commands.clear()

    report = invalidate_all(client, prefix=prefix, count=500)

    assert (report.removed, report.kept_newer) == (3001, 0)
    assert _count(client, prefix + "*") == 2  # other: and recsx: stay
    assert all(client.get(k) == b"x" for k in strangers)
    assert _count(client, other_prefix + "*") == 150
    assert "KEYS" not in client.commands and "FLUSHALL" not in client.commands
    assert "FLUSHDB" not in client.commands
    assert client.commands.count("SCAN") > 3  # in batches, not one call per kind
    client.delete(f"{prefix[:-1]}recs:1")


def test_a_glob_character_in_the_prefix_is_matched_literally(client: Recording) -> None:
    base = f"test:invalidate:{uuid.uuid4().hex[:12]}"
    star, plain = f"{base}*:", f"{base}x:"
    user = uuid.uuid4()
    try:
        write_entries(client, [entry(user, DAY, T0)], prefix=star)
        write_entries(client, [entry(user, DAY, T0)], prefix=plain)
        assert invalidate_all(client, prefix=star).removed == 1
        assert client.exists(*_keys(user, star)) == 0
        assert client.exists(*_keys(user, plain)) == 3
    finally:
        client.delete(*_keys(user, star), *_keys(user, plain))


def test_invalidate_all_never_removes_an_entry_written_while_it_runs(
    client: Recording, prefix: str
) -> None:
    old = [uuid.uuid4() for _ in range(2000)]
    write_entries(client, [entry(u, DAY, T0) for u in old], prefix=prefix)
    # The recalculated users get an entry generated after the invalidation started.
    fresh = old[::10]
    started = threading.Event()

    def writer() -> None:
        with redis.Redis.from_url(REDIS_URL) as own:
            started.set()
            for u in fresh:
                write_entries(own, [entry(u, DAY, datetime.now(UTC), tag="new")], prefix=prefix)

    cutoff = datetime.now(UTC)
    thread = threading.Thread(target=writer)
    thread.start()
    started.wait()
    invalidate_all(client, prefix=prefix, count=100, generated_before=cutoff)
    thread.join()
    left = {u for u in old if get_entry(client, u, prefix=prefix) is not None}
    assert left == set(fresh)


@pytest.fixture
def empty_db() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL.rsplit("/", 1)[0] + f"/{EMPTY_PREFIX_DB}")
    if c.dbsize():
        pytest.fail(f"refusing to run: Redis database {EMPTY_PREFIX_DB} is not empty")
    yield c
    keys = list(c.scan_iter(count=1000))
    if keys:
        c.delete(*keys)
    c.close()


def test_with_an_empty_prefix_only_the_contracts_key_names_go(empty_db: redis.Redis) -> None:
    users = [uuid.uuid4() for _ in range(20)]
    write_entries(empty_db, [entry(u, DAY, T0) for u in users])
    others = ["app:recs:1", "recs", "recsx:1", "portfolios:1", "recs_versions:1", "session:1"]
    empty_db.mset(dict.fromkeys(others, "x"))

    assert invalidate_all(empty_db, prefix="").removed == 20

    assert sorted(k.decode() for k in empty_db.scan_iter(count=1000)) == sorted(others)


def test_invalidation_refuses_what_is_not_a_user_or_a_time(client: Recording) -> None:
    with pytest.raises(TypeError, match="user_id"):
        invalidate(client, "6f1c0000", prefix="x:")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="naive"):
        invalidate_all(client, prefix="x:", generated_before=datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="count"):
        invalidate_all(client, prefix="x:", count=0)
