"""`overnight cache invalidate --user ID | --all` through the real command, on the real Redis
under a key prefix of its own."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import redis

from overnight_pipeline.storage.cache import get_entry, write_entries
from overnight_pipeline_tests.storage.test_cache import entry
from overnight_pipeline_tests.support.databases import REDIS_URL, redis_namespace
from overnight_pipeline_tests.test_cli import closed_port, overnight, refused

DAY = date(2026, 11, 30)
T0 = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_namespace("test:cachecmd")


@pytest.fixture
def other_prefix() -> Iterator[str]:
    yield from redis_namespace("test:cachecmd")


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


def _count(client: redis.Redis, prefix: str) -> int:
    return sum(1 for _ in client.scan_iter(match=prefix + "*", count=1000))


def test_invalidate_one_user_and_then_everything_under_the_prefix(
    tmp_path: Path, client: redis.Redis, prefix: str, other_prefix: str
) -> None:
    users = [uuid.uuid4() for _ in range(2500)]
    write_entries(client, [entry(u, DAY, T0) for u in users], prefix=prefix)
    write_entries(client, [entry(u, DAY, T0) for u in users[:10]], prefix=other_prefix)
    env = {"REDIS_URL": REDIS_URL, "CACHE_PREFIX": prefix}

    done = overnight("cache", "invalidate", "--user", str(users[0]), cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert f"invalidated 1 user under CACHE_PREFIX={prefix!r}" in done.stdout
    assert get_entry(client, users[0], prefix=prefix) is None
    assert get_entry(client, users[1], prefix=prefix) is not None
    assert _count(client, prefix) == 3 * 2499

    done = overnight("cache", "invalidate", "--all", cwd=tmp_path, **env)
    assert done.returncode == 0, done.stderr
    assert "invalidated 2499 users" in done.stdout
    assert _count(client, prefix) == 0
    assert _count(client, other_prefix) == 30


def test_a_bad_user_id_or_no_choice_exits_2(tmp_path: Path, prefix: str) -> None:
    env = {"REDIS_URL": REDIS_URL, "CACHE_PREFIX": prefix}
    done = overnight("cache", "invalidate", "--user", "6f1c0000", cwd=tmp_path, **env)
    refused(done, 2, "error: --user must be a UUID (got '6f1c0000')")
    assert overnight("cache", "invalidate", cwd=tmp_path, **env).returncode == 2
    both = overnight("cache", "invalidate", "--all", "--user", str(uuid.uuid4()), cwd=tmp_path)
    assert both.returncode == 2


def test_unreachable_redis_exits_3_naming_it(tmp_path: Path) -> None:
    port = closed_port()
    for which in (["--all"], ["--user", str(uuid.uuid4())]):
        done = overnight(
            "cache", "invalidate", *which, cwd=tmp_path, REDIS_URL=f"redis://127.0.0.1:{port}/0"
        )
        refused(done, 3, f"error: REDIS_URL: cannot connect to 127.0.0.1:{port} (")
