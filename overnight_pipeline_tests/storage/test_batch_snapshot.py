"""A batch's inputs come from one committed state (issue 23, torn inputs): a writer that
commits between `load_batch`'s statements is seen entirely or not at all."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest
from sqlalchemy import Connection, Engine, event, select, update

from overnight_pipeline.seed import seed
from overnight_pipeline.storage.batches import (
    LoadedBatch,
    MarketSnapshot,
    load_batch,
)
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import (
    asset_classes_table,
    criteria_rules_table,
    criteria_versions_table,
    holdings_table,
    users_table,
)
from overnight_pipeline.storage.snapshot_reads import snapshot_reads
from overnight_pipeline_tests.support.databases import (
    migrated_pg_database,
    migrated_sqlite_database,
)

DAY = date(2026, 11, 27)
NO_MARKET_DATA = MarketSnapshot({}, pd.DataFrame(), 0)


@pytest.fixture(scope="module", params=["postgresql", "sqlite"])
def engine(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Engine]:
    """A database of its own (its rows are committed and rewritten), seeded."""
    if request.param == "postgresql":
        databases = migrated_pg_database("overnight_snapshot")
        url = next(databases)
    else:
        databases = iter(())
        url = migrated_sqlite_database(tmp_path_factory, "snapshot")
    engine = make_engine(url)
    with engine.begin() as conn:
        seed(conn, users=12, seed=5, as_of=DAY)
    yield engine
    engine.dispose()
    next(databases, None)


def _user_ids(engine: Engine) -> list[uuid.UUID]:
    with engine.connect() as conn:
        return sorted(conn.scalars(select(users_table.c.id)))


def _state(loaded: LoadedBatch) -> tuple[Any, ...]:
    b = loaded.batch
    return tuple(
        [tuple(map(repr, row)) for row in frame.itertuples(index=False)]
        for frame in (b.users, b.classes, b.holdings, b.rules)
    )


def _rewrite(engine: Engine, ids: list[uuid.UUID], n: int) -> None:
    """One committed change of every user of `ids` in the tables the batch reads: rules'
    points (its first statement), contribution, classes' minimum allocation, quantities."""
    versions = select(criteria_versions_table.c.id).where(
        criteria_versions_table.c.user_id.in_(ids)
    )
    with engine.begin() as conn:
        conn.execute(
            update(criteria_rules_table)
            .where(criteria_rules_table.c.criteria_version_id.in_(versions))
            .values(points=n)
        )
        conn.execute(
            update(users_table)
            .where(users_table.c.id.in_(ids))
            .values(default_contribution=Decimal(1000 * n))
        )
        conn.execute(
            update(asset_classes_table)
            .where(asset_classes_table.c.user_id.in_(ids))
            .values(min_allocation_value=Decimal(n))
        )
        conn.execute(
            update(holdings_table)
            .where(holdings_table.c.user_id.in_(ids))
            .values(quantity=Decimal(n) + Decimal("0.5"))
        )


def _load_with_a_write_between_statements(
    engine: Engine, conn: Connection, ids: list[uuid.UUID], n: int
) -> LoadedBatch:
    """`load_batch` on `conn`, with `_rewrite` committed from another connection right after
    its first statement ran."""
    statements = 0

    def after(*_: Any) -> None:
        nonlocal statements
        statements += 1
        if statements == 1:
            _rewrite(engine, ids, n)

    event.listen(conn, "after_cursor_execute", after)
    try:
        return load_batch(conn, ids, snapshot=NO_MARKET_DATA)
    finally:
        event.remove(conn, "after_cursor_execute", after)


def test_a_batch_reads_one_committed_state_while_a_load_commits(engine: Engine) -> None:
    ids = _user_ids(engine)
    _rewrite(engine, ids, 2)
    with engine.connect() as conn:
        before = _state(load_batch(conn, ids, snapshot=NO_MARKET_DATA))
    with snapshot_reads(engine) as conn:
        seen = _state(_load_with_a_write_between_statements(engine, conn, ids, 3))
    with engine.connect() as conn:
        after = _state(load_batch(conn, ids, snapshot=NO_MARKET_DATA))
    assert before != after  # the write did land
    # The snapshot is taken by the first statement, so the batch is the state before.
    assert seen == before


def test_without_one_snapshot_the_same_batch_is_torn(engine: Engine) -> None:
    # The harness sees a tear when the reads are separate transactions (READ COMMITTED,
    # or SQLite's driver running each SELECT in autocommit): what the fix prevents.
    ids = _user_ids(engine)
    _rewrite(engine, ids, 4)
    with engine.connect() as conn:
        before = _state(load_batch(conn, ids, snapshot=NO_MARKET_DATA))
    with engine.connect() as conn:
        seen = _state(_load_with_a_write_between_statements(engine, conn, ids, 5))
    with engine.connect() as conn:
        after = _state(load_batch(conn, ids, snapshot=NO_MARKET_DATA))
    assert seen not in (before, after)
    assert seen[0] == after[0] and seen[3] == before[3]  # users new, rules old


def test_snapshot_reads_are_one_transaction(engine: Engine) -> None:
    if engine.dialect.name == "sqlite":
        with snapshot_reads(engine) as conn:
            conn.execute(select(users_table.c.id)).all()
            assert conn.connection.dbapi_connection.in_transaction  # type: ignore[union-attr]
        return
    with snapshot_reads(engine) as conn:
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "repeatable read"
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "on"
    with engine.connect() as conn:  # the pooled connection is back to the defaults
        assert conn.exec_driver_sql("SHOW transaction_isolation").scalar() == "read committed"
        assert conn.exec_driver_sql("SHOW transaction_read_only").scalar() == "off"
