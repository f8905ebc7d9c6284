"""Dashboard fixtures: the app on its own throwaway PostgreSQL (and SQLite) database and
the real Redis.

The app reads through its own connections, so these tests commit their rows: they get
databases of their own instead of the session's shared ones, which other packages' tests
expect to stay empty. Rows use fresh random user ids, so tests never see each other's data.
Redis keys live under a per-test prefix, refused when not empty, deleted after.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
import redis
from sqlalchemy import Engine
from starlette.testclient import TestClient

from dashboard_api.app import create_app
from dashboard_api.auth import issue_token
from dashboard_api.services import ApiOptions
from overnight_pipeline.settings import Settings, load_settings
from overnight_pipeline.storage.cache import write_entries
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    engine_for,
    migrated_pg_database,
    migrated_sqlite_database,
    redis_namespace,
)
from overnight_pipeline_tests.support.stored_results import (
    Planner,
    insert_holdings,
    insert_users,
    persist,
    planner,
)

SECRET = "test-secret-for-the-dashboard-" + "0123456789abcdef" * 3
# Short timeouts keep the failure tests fast; production defaults are in ApiOptions.
FAST = ApiOptions(redis_connect_timeout=0.2, redis_timeout=0.2, redis_cooldown=0.3, db_timeout=1.0)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def token_for(user: uuid.UUID, *, admin: bool = False, secret: str = SECRET) -> str:
    return issue_token(secret, user, admin=admin)


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    yield from migrated_pg_database("overnight_api_test")


@pytest.fixture(scope="session")
def pg_engine(pg_url: str) -> Iterator[Engine]:
    yield from engine_for(pg_url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return migrated_sqlite_database(tmp_path_factory, "api-sqlite")


@pytest.fixture(scope="session")
def sqlite_engine(sqlite_url: str) -> Iterator[Engine]:
    yield from engine_for(sqlite_url)


@pytest.fixture
def sync_redis() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    yield from redis_namespace("test:api")


@pytest.fixture
def settings(pg_url: str, redis_prefix: str) -> Settings:
    return load_settings(
        database_url=pg_url,
        redis_url=REDIS_URL,
        cache_prefix=redis_prefix,
        dashboard_secret=SECRET,
    )


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Callable[..., TestClient]]:
    """Clients for the app with these settings (or overrides); closed after the test."""
    opened: list[TestClient] = []

    def make(
        options: ApiOptions = FAST, *, raise_server_exceptions: bool = True, **overrides: Any
    ) -> TestClient:
        app_settings = load_settings(**{**settings.model_dump(), **overrides})
        client = TestClient(
            create_app(app_settings, options=options),
            raise_server_exceptions=raise_server_exceptions,
        )
        client.__enter__()
        opened.append(client)
        return client

    yield make
    for client in opened:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def new_user(pg_engine: Engine) -> Callable[..., Planner]:
    """A loaded user with computed recommendations `hours_ago` old (persisted unless told)."""

    def make(
        *,
        hours_ago: float = 3.0,
        market_date: date | None = None,
        persisted: bool = True,
        contribution: str = "20000.00",
        seed: int = 0,
    ) -> Planner:
        user = uuid.uuid4()
        generated_at = datetime.now(UTC) - timedelta(hours=hours_ago)
        p = planner(
            user,
            generated_at=generated_at,
            market_date=market_date,
            contribution=contribution,
            seed=seed,
        )
        with pg_engine.begin() as conn:
            insert_users(conn, [user])
            insert_holdings(conn, [p])
            if persisted:
                persist(conn, [p])
        return p

    return make


@pytest.fixture
def cache(sync_redis: redis.Redis, redis_prefix: str) -> Callable[..., None]:
    """Warm the cache as the pipeline does."""

    def put(*planners: Planner) -> None:
        write_entries(sync_redis, [p.cache_entry() for p in planners], prefix=redis_prefix)

    return put
