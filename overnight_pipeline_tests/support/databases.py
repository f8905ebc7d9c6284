"""Throwaway PostgreSQL databases, SQLite files and Redis namespaces on the local servers,
for the conftests' fixtures and the benchmarks."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import Engine, text
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
