"""Shared fixtures: a throwaway PostgreSQL database migrated with Alembic, SQLite beside it.
The packages' conftests build their own databases and Redis namespaces with the helpers of
support/databases.

PostgreSQL and Redis are required: when they cannot be reached the tests error out, they
never skip.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine

from overnight_pipeline_tests.support.databases import (
    engine_for,
    migrated_pg_database,
    migrated_sqlite_database,
)

# The tests' settings (`load_settings()`, read whenever a test builds them): retries of a
# failing step wait 0.05 s instead of the production 2 s. They reach the steps through the
# `tuning` resource of `definitions_for(settings)`: no import order matters.
os.environ.setdefault("RETRY_DELAY_SECONDS", "0.05")


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    yield from migrated_pg_database()


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    yield from engine_for(pg_url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite_database(tmp_path_factory, "sqlite")


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    yield from engine_for(sqlite_url)


def _rolled_back(engine: Engine) -> Iterator[Connection]:
    with engine.connect() as conn:
        trans = conn.begin()
        try:
            yield conn
        finally:
            trans.rollback()


@pytest.fixture
def pg_conn(pg_engine: Engine) -> Iterator[Connection]:
    """A connection inside a transaction that is rolled back after the test."""
    yield from _rolled_back(pg_engine)


@pytest.fixture(params=["postgresql", "sqlite"])
def db_conn(request: pytest.FixtureRequest) -> Iterator[Connection]:
    """The same test on PostgreSQL and on the embedded SQLite, each rolled back."""
    engine = request.getfixturevalue(
        f"{'pg' if request.param == 'postgresql' else 'sqlite'}_engine"
    )
    yield from _rolled_back(engine)


@pytest.fixture
def data_dir() -> Path:
    return Path(__file__).parent / "data"


# The modules that wait longest on daemons and subprocesses, slowest first. Collected first,
# so that with `make test`'s two workers (pytest-xdist, a module per worker) they start at
# once and the other modules run beside them, instead of one of them starting last and
# running alone at the end. In one process the order changes nothing but the order.
LONG_MODULES = (
    "pipeline/test_operator_paths.py",
    "pipeline/test_backfill.py",
    "pipeline/test_shards.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.as_posix()
        for i, module in enumerate(LONG_MODULES):
            if path.endswith(module):
                return i
        return len(LONG_MODULES)

    items.sort(key=rank)  # stable: each module keeps its own order
