"""The batched fallback read returns, per user, exactly the row of
`storage.queries.newest_recommendation`, however the misses are grouped."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine

from dashboard_api.db import ThreadedDB
from dashboard_api.newest import NewestRows
from dashboard_api.problems import Problem
from overnight_pipeline.storage import queries
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import user_changes_table
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.support.stored_results import insert_users, persist, planner


def test_batched_reads_match_the_one_user_query(pg_url: str, pg_engine: Engine) -> None:
    now = datetime.now(UTC)
    users = [uuid.uuid4() for _ in range(40)]
    rows = []
    for n, user in enumerate(users[:30]):
        rows.append(planner(user, generated_at=now - timedelta(hours=n % 5 + 1), seed=n))
        if n % 3 == 0:  # a backfill: an older market date, generated later
            # Older than every row above, whose dates are up to 5 h back (yesterday's after
            # midnight UTC).
            rows.append(
                planner(
                    user,
                    generated_at=now,
                    market_date=now.date() - timedelta(days=n % 4 + 2),
                    seed=n + 100,
                )
            )
    with pg_engine.begin() as conn:
        insert_users(conn, users)
        persist(conn, rows)
    with pg_engine.connect() as conn:
        expected = {u: queries.newest_recommendation(conn, user_id=u) for u in users}
    assert sum(1 for row in expected.values() if row is None) == 10

    # A session time zone other than UTC: generated_at must still come back in UTC.
    engine = make_engine(pg_url, connect_args={"options": "-c TimeZone=America/Sao_Paulo"})

    async def main() -> dict[uuid.UUID, Any]:
        newest = NewestRows(ThreadedDB(engine, limit=2, timeout=5), concurrency=2, max_batch=7)
        try:
            asked = users * 2  # the same user twice in a batch gets the same row twice
            got = await asyncio.gather(*(newest.get(u) for u in asked))
            assert got[: len(users)] == got[len(users) :]
            alone = await newest.get(users[0])  # an idle loader answers a lone miss
            assert alone == got[0]
            return dict(zip(users, got[: len(users)], strict=True))
        finally:
            await newest.aclose()

    got = asyncio.run(main())
    engine.dispose()
    assert got == expected
    assert all(row.generated_at.tzinfo == UTC for row in got.values() if row is not None)


def test_a_database_failure_reaches_every_waiter() -> None:
    engine = make_engine(f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/nowhere")

    async def main() -> None:
        newest = NewestRows(ThreadedDB(engine, limit=1, timeout=0.3), concurrency=1)
        try:
            results = await asyncio.gather(
                *(newest.get(uuid.uuid4()) for _ in range(5)), return_exceptions=True
            )
            assert all(isinstance(r, Problem) and r.status == 503 for r in results)
        finally:
            await newest.aclose()

    asyncio.run(main())
    engine.dispose()


def test_sqlite_reads_the_same_rows_one_query_per_user(sqlite_engine: Engine) -> None:
    now = datetime.now(UTC)
    users = [uuid.uuid4() for _ in range(6)]
    with sqlite_engine.begin() as conn:
        insert_users(conn, users)
        persist(conn, [planner(u, generated_at=now, seed=i) for i, u in enumerate(users[:4])])
    with sqlite_engine.connect() as conn:
        expected = {u: queries.newest_recommendation(conn, user_id=u) for u in users}

    async def main() -> list[Any]:
        newest = NewestRows(ThreadedDB(sqlite_engine, limit=2, timeout=5), max_batch=4)
        try:
            return await asyncio.gather(*(newest.get(u) for u in users))
        finally:
            await newest.aclose()

    assert dict(zip(users, asyncio.run(main()), strict=True)) == expected
    assert sum(1 for row in expected.values() if row is None) == 2


@pytest.mark.parametrize("concurrency", [1, 3])
def test_many_concurrent_misses_are_all_answered(
    pg_url: str, pg_engine: Engine, concurrency: int
) -> None:
    users = [uuid.uuid4() for _ in range(300)]
    now = datetime.now(UTC)
    with pg_engine.begin() as conn:
        insert_users(conn, users)
        persist(conn, [planner(u, generated_at=now, seed=i % 40) for i, u in enumerate(users)])

    async def main() -> None:
        db = ThreadedDB(pg_engine, limit=3, timeout=5)
        newest = NewestRows(db, concurrency=concurrency, max_batch=64)
        try:
            got = await asyncio.gather(*(newest.get(u) for u in users))
            assert [r.user_id if r else None for r in got] == users
        finally:
            await newest.aclose()

    asyncio.run(main())


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_batched_reads_give_each_users_last_change_with_or_without_a_row(
    backend: str, pg_engine: Engine, sqlite_engine: Engine
) -> None:
    engine = pg_engine if backend == "postgresql" else sqlite_engine
    now = datetime.now(UTC).replace(microsecond=654321)
    users = [uuid.uuid4() for _ in range(8)]
    with engine.begin() as conn:
        insert_users(conn, users)
        # Rows for the first four, on several market dates (the change is looked up once).
        persist(
            conn,
            [
                planner(u, generated_at=now - timedelta(hours=3), seed=i)
                for i, u in enumerate(users[:4])
            ],
        )
        persist(
            conn,
            [
                planner(u, generated_at=now, market_date=now.date() - timedelta(days=2), seed=i)
                for i, u in enumerate(users[:4])
            ],
        )
        # Changes for users 0, 1 (with a row) and 4, 5 (without one); 0 changed twice.
        changes = [(users[0], now - timedelta(hours=5)), (users[0], now - timedelta(minutes=1))]
        changes += [(users[1], now - timedelta(hours=4)), (users[4], now), (users[5], now)]
        conn.execute(
            user_changes_table.insert(),
            [{"user_id": u, "changed_at": t, "what": ["holdings"]} for u, t in changes],
        )
        expected_rows = {u: queries.newest_recommendation(conn, user_id=u) for u in users}
    expected = {
        users[0]: now - timedelta(minutes=1),
        users[1]: now - timedelta(hours=4),
        users[4]: now,
        users[5]: now,
    }

    async def main() -> list[Any]:
        newest = NewestRows(ThreadedDB(engine, limit=2, timeout=5), max_batch=5)
        try:
            return await asyncio.gather(*(newest.read(u) for u in users))
        finally:
            await newest.aclose()

    got = dict(zip(users, asyncio.run(main()), strict=True))
    assert {u: n.row for u, n in got.items()} == expected_rows
    assert {u: n.changed_at for u, n in got.items() if n.changed_at} == expected
    assert all(n.changed_at is None or n.changed_at.tzinfo == UTC for n in got.values())
