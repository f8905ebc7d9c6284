"""A calculation's roster (issue 25): the partition's users, assets and currencies computed
once by the calculation's first step and read back by the others, on PostgreSQL and SQLite;
a run through Dagster computes the partition's users once, not once per step."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from dagster import DagsterInstance
from sqlalchemy import Engine, func, select, update

from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.seed import seed
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage import rosters
from overnight_pipeline.storage.batches import (
    partition_currencies,
    partition_instruments,
    partition_users,
)
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import partition_rosters_table, users_table
from overnight_pipeline.storage.partition_reads import partition_user_texts
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    migrated_pg_database,
    redis_namespace,
)

DAY = date(2026, 11, 27)
MARKETS = {m.code: m for m in DEFAULT_MARKETS}
KW: dict[str, Any] = {"market": "NYSE", "day": DAY, "markets": MARKETS}


@pytest.fixture
def engine(fresh_url: str) -> Iterator[Engine]:
    migrate(fresh_url)
    engine = make_engine(fresh_url)
    with engine.begin() as conn:
        seed(conn, users=30, seed=3, as_of=DAY)
    yield engine
    engine.dispose()


def test_the_roster_is_what_the_partition_queries_give_and_is_stored_once(
    engine: Engine,
) -> None:
    cid = uuid.uuid4()
    with engine.begin() as conn:
        first = rosters.roster(conn, correlation_id=cid, **KW)
    with engine.connect() as conn:
        users = partition_users(conn, **KW)
        assert first.users == users and len(users) > 2
        assert first.instruments == partition_instruments(conn, users)
        assert first.currencies == partition_currencies(conn, users)
        t = partition_rosters_table
        assert conn.scalar(select(func.count()).select_from(t)) == 1

    # A user deactivated after the calculation's first step: its later steps (and their
    # retries) still serve the users it started with; a new calculation does not.
    gone = users[0]
    with engine.begin() as conn:
        conn.execute(update(users_table).where(users_table.c.id == gone).values(active=False))
    with engine.begin() as conn:
        assert rosters.roster(conn, correlation_id=cid, **KW) == first
        fresh = rosters.roster(conn, correlation_id=uuid.uuid4(), **KW)
    assert fresh.users == users[1:]


def test_rosters_older_than_a_week_go_when_a_new_one_is_written(engine: Engine) -> None:
    old, recent = uuid.uuid4(), uuid.uuid4()
    t = partition_rosters_table
    with engine.begin() as conn:
        rosters.roster(conn, correlation_id=old, **KW)
        rosters.roster(conn, correlation_id=recent, **KW)
        conn.execute(
            update(t)
            .where(t.c.correlation_id == old)
            .values(created_at=datetime.now(UTC) - rosters.KEPT - timedelta(minutes=1))
        )
        rosters.roster(conn, correlation_id=uuid.uuid4(), **KW)
        kept = set(conn.scalars(select(t.c.correlation_id)))
    assert old not in kept and recent in kept and len(kept) == 2


def test_a_run_computes_the_partitions_users_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def counted(*args: Any, **kwargs: Any) -> list[str]:
        calls.append(kwargs["market"])
        return partition_user_texts(*args, **kwargs)

    monkeypatch.setattr(rosters, "partition_user_texts", counted)
    for url, prefix in zip(
        migrated_pg_database("overnight_rosters"), redis_namespace("rosters"), strict=True
    ):
        engine = make_engine(url)
        with engine.begin() as conn:
            seed(conn, users=30, seed=3, as_of=DAY)
        engine.dispose()
        settings = load_settings(
            database_url=url, redis_url=REDIS_URL, cache_prefix=prefix, user_batch_size=5
        )
        job = definitions_for(settings, env_vars=False).resolve_job_def(OVERNIGHT_JOB)
        with DagsterInstance.ephemeral() as instance:
            result = job.execute_in_process(
                instance=instance, partition_key=partition_key("NYSE", DAY)
            )
        assert result.success
    assert calls == ["NYSE"]
