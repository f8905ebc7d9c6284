"""Change markers and change times (`storage.freshness`): a marker never goes backwards and
lives 24 h from the change, what Redis holds that this project did not write is ignored by
readers and overwritten by writers; the newest change of each user from `user_changes`, on
PostgreSQL and SQLite; `load` says who changed and when."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
import redis
from sqlalchemy import Connection, text

from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.storage.cache_entries import changed_key
from overnight_pipeline.storage.freshness import (
    changed_after,
    mark_changed,
    marker_stamp,
    newest_changes,
    stamp,
)
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import user_changes_table
from overnight_pipeline_tests.storage.test_load import MARKETS, USER, sample
from overnight_pipeline_tests.support.databases import REDIS_URL, redis_namespace
from overnight_pipeline_tests.support.stored_results import insert_users


@pytest.fixture
def prefix() -> Iterator[str]:
    yield from redis_namespace("test:changed")


@pytest.fixture
def client() -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(REDIS_URL)
    yield c
    c.close()


def test_a_marker_never_goes_backwards_and_lives_a_day_from_the_change(
    client: redis.Redis, prefix: str
) -> None:
    now = datetime.now(UTC)
    users = [uuid.uuid4() for _ in range(7)]
    earlier, later = now - timedelta(minutes=10), now - timedelta(minutes=5)
    assert mark_changed(client, users, later, prefix=prefix, chunk=3) == 7  # three round trips
    assert mark_changed(client, users[:2], earlier, prefix=prefix) == 0  # older: kept
    assert mark_changed(client, users[:1], now, prefix=prefix) == 1  # newer: written
    got = client.mget([changed_key(u, prefix) for u in users])
    assert got == [stamp(now).encode()] + [stamp(later).encode()] * 6
    assert 86_400 - 5 <= int(client.ttl(changed_key(users[0], prefix))) <= 86_400
    # Until the change + 24 h, not the write + 24 h: longer than any entry made before it.
    assert 86_400 - 305 <= int(client.ttl(changed_key(users[1], prefix))) <= 86_400 - 299
    assert mark_changed(client, users, now - timedelta(days=1, seconds=1), prefix=prefix) == 0
    assert client.get(changed_key(uuid.uuid4(), prefix)) is None


def test_concurrent_marks_keep_the_newest_whatever_the_order(
    client: redis.Redis, prefix: str
) -> None:
    now = datetime.now(UTC)
    users = [uuid.uuid4() for _ in range(200)]
    times = [now - timedelta(seconds=s) for s in range(8)]

    def mark(moment: datetime) -> None:
        with redis.Redis.from_url(REDIS_URL) as own:
            mark_changed(own, users, moment, prefix=prefix, chunk=25)

    threads = [threading.Thread(target=mark, args=(t,)) for t in times]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(client.mget([changed_key(u, prefix) for u in users])) == {stamp(now).encode()}


@pytest.mark.parametrize(
    "planted",
    [
        b"garbage",
        b"",
        b"2026-02-30T12:00:00.000000Z",  # not a day of the calendar
        b"2999-01-01T00:00:00.000000Z",  # would keep every real change out forever
        b"2026-12-01T12:00:00Z",  # not the fixed-width stamp
    ],
)
def test_a_marker_this_project_did_not_write_is_overwritten(
    client: redis.Redis, prefix: str, planted: bytes
) -> None:
    user, now = uuid.uuid4(), datetime.now(UTC)
    client.set(changed_key(user, prefix), planted)
    assert mark_changed(client, [user], now, prefix=prefix) == 1
    assert client.get(changed_key(user, prefix)) == stamp(now).encode()


def test_a_key_of_another_type_is_overwritten(client: redis.Redis, prefix: str) -> None:
    user, now = uuid.uuid4(), datetime.now(UTC)
    client.hset(changed_key(user, prefix), "x", "1")
    assert mark_changed(client, [user], now, prefix=prefix) == 1
    assert client.get(changed_key(user, prefix)) == stamp(now).encode()


def test_a_reader_believes_only_a_marker_this_project_could_have_written() -> None:
    now = datetime(2026, 12, 7, 14, 0, tzinfo=UTC)
    good = stamp(now - timedelta(minutes=2))
    assert good == "2026-12-07T13:58:00.000000Z"
    assert marker_stamp(good.encode(), now=now) == good
    soon = stamp(now + timedelta(minutes=9))  # another writer's clock a little ahead
    assert marker_stamp(soon.encode(), now=now) == soon
    for bad in (
        None,
        good,  # str: the client returns bytes
        b"",
        b"garbage",
        b"2026-02-30T12:00:00.000000Z",
        b"2026-12-07T25:00:00.000000Z",
        stamp(now + timedelta(minutes=11)).encode(),
        b"2026-12-07T13:58:00Z",
        good.encode() + b"\n",
        b" " + good.encode(),
        "2026-12-07T13:58:00.000000Z".encode("utf-16"),
    ):
        assert marker_stamp(bad, now=now) is None, bad


def test_the_flag_is_the_change_only_when_it_is_after_the_result() -> None:
    generated, change = "2026-12-07T09:00:00.000000Z", "2026-12-07T13:58:00.000000Z"
    assert changed_after(change, generated) == change
    assert changed_after(generated, change) is None
    assert changed_after(change, change) is None  # the result of that very change
    assert changed_after(change, None) == change  # nothing served yet
    assert changed_after(None, generated) is None and changed_after(None, None) is None


def test_newest_changes_gives_each_users_last_change(db_conn: Connection) -> None:
    now = datetime.now(UTC).replace(microsecond=123456)
    a, b, never = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    insert_users(db_conn, [a, b, never])
    rows = [
        (a, now - timedelta(hours=2), None),
        (a, now, now),  # processed: still when the inputs last changed
        (a, now - timedelta(hours=1), None),
        (b, now - timedelta(minutes=3), None),
    ]
    db_conn.execute(
        user_changes_table.insert(),
        [
            {"user_id": u, "changed_at": t, "what": ["holdings"], "processed_at": p}
            for u, t, p in rows
        ],
    )
    found = newest_changes(db_conn, [a, b, never, uuid.uuid4()])
    assert found == {a: now, b: now - timedelta(minutes=3)}
    assert all(t.tzinfo == UTC for t in found.values())
    assert newest_changes(db_conn, []) == {}


def test_newest_changes_probes_the_user_index(pg_conn: Connection) -> None:
    """One backward probe per user on (user_id, changed_at), never a scan of the outbox."""
    from overnight_pipeline.storage.freshness import _NEWEST_CHANGES

    sql = str(_NEWEST_CHANGES.compile(dialect=pg_conn.dialect))
    pg_conn.execute(text("SET LOCAL enable_seqscan = off"))
    plan = "\n".join(
        r[0]
        for r in pg_conn.exec_driver_sql(
            "EXPLAIN " + sql, {"user_ids": [uuid.uuid4(), uuid.uuid4()]}
        )
    )
    assert "ix_user_changes_user_changed" in plan and "Backward" in plan, plan


def test_load_reports_who_changed_and_when(db_conn: Connection) -> None:
    doc = sample()
    first = load(db_conn, parse_load_file(doc, markets=MARKETS))
    changed_at = db_conn.scalar(
        user_changes_table.select()
        .with_only_columns(user_changes_table.c.changed_at)
        .where(user_changes_table.c.user_id == uuid.UUID(USER))
    )
    assert first.changed_user_ids == (uuid.UUID(USER),) and first.changed_at == changed_at
    again = load(db_conn, parse_load_file(doc, markets=MARKETS))
    assert again.changed_user_ids == () and again.changed_at is None
    doc["users"][0]["defaultContribution"] = "5000.00"
    third = load(db_conn, parse_load_file(doc, markets=MARKETS))
    assert third.changed_user_ids == (uuid.UUID(USER),)
    assert third.changed_at is not None and third.changed_at > changed_at
