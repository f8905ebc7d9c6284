"""Shared fixtures: a throwaway PostgreSQL database migrated with Alembic, SQLite beside it,
and the helpers the packages' conftests build their own databases and Redis namespaces with.

PostgreSQL and Redis are required: when they cannot be reached the tests error out, they
never skip.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

# Read when `overnight_pipeline.defs.assets` is imported (the assets are module-level):
# retries of the tests' failing steps wait 0.05 s instead of the production 2 s.
os.environ.setdefault("RETRY_DELAY_SECONDS", "0.05")
from sqlalchemy import Connection, Engine, text
from sqlalchemy.engine import make_url

from overnight_pipeline.storage.db import make_engine, migrate

REDIS_URL = "redis://127.0.0.1:6379/0"
PG_ADMIN_URL = os.environ.get(
    "TEST_PG_ADMIN_URL", "postgresql+psycopg://root@127.0.0.1:5432/postgres"
)


def create_pg_database(prefix: str = "overnight_test") -> str:
    """A new empty database on the test server; returns its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


def drop_pg_database(url: str) -> None:
    name = make_url(url).database
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def migrated_pg_database(prefix: str = "overnight_test") -> Iterator[str]:
    """A throwaway PostgreSQL database at Alembic's head, dropped afterwards (a fixture body)."""
    url = create_pg_database(prefix)
    migrate(url)
    yield url
    drop_pg_database(url)


def migrated_sqlite_database(tmp_path_factory: pytest.TempPathFactory, name: str) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp(name) / 'app.db'}"
    migrate(url)
    return url


def engine_for(url: str) -> Iterator[Engine]:
    """An engine on `url`, disposed afterwards (a fixture body)."""
    engine = make_engine(url)
    yield engine
    engine.dispose()


def redis_namespace(tag: str = "test") -> Iterator[str]:
    """A Redis key prefix nobody else uses, refused if not empty, emptied afterwards (a
    fixture body; never FLUSHALL on a shared server)."""
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"{tag}:{uuid.uuid4().hex[:12]}:"
    if next(client.scan_iter(match=prefix + "*", count=1000), None) is not None:
        pytest.fail(f"refusing to run: Redis namespace {prefix!r} is not empty")
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


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
