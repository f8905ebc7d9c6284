"""Property-based run of every operation in `/openapi.json` against a live server.

With a valid (admin) token, no generated request may get a 5xx or a response that breaks
the documented status codes, content types or schemas (schemathesis' default checks).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from sqlalchemy import Engine

from dashboard_api.openapi import build_openapi
from overnight_pipeline.settings import Settings, load_settings
from overnight_pipeline.storage.cache import write_entries
from overnight_pipeline_tests.api.conftest import FAST, SECRET, bearer, token_for
from overnight_pipeline_tests.api.live import live_server
from overnight_pipeline_tests.support.stored_results import (
    insert_asset,
    insert_calculation,
    insert_users,
    persist,
    planner,
)

USER = uuid.uuid4()


@pytest.fixture(scope="module")
def api_schema(pg_url: str, pg_engine: Engine) -> Iterator[Any]:
    prefix = f"test:schemathesis:{uuid.uuid4().hex[:12]}:"
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    if next(client.scan_iter(match=prefix + "*"), None) is not None:
        pytest.fail(f"refusing to run: Redis namespace {prefix!r} is not empty")
    now = datetime.now(UTC)
    p = planner(USER, generated_at=now - timedelta(hours=2))
    with pg_engine.begin() as conn:
        insert_users(conn, [USER])
        persist(conn, [p])
        ko = insert_asset(conn, "NYSE", f"ST{uuid.uuid4().hex[:4]}")
        for i in range(3):
            insert_calculation(
                conn, asset_id=ko, user_id=USER, score="12.5", calculated_at=now - timedelta(days=i)
            )
    write_entries(client, [p.cache_entry()], prefix=prefix)
    app_settings: Settings = load_settings(
        database_url=pg_url,
        redis_url="redis://127.0.0.1:6379/0",
        cache_prefix=prefix,
        dashboard_secret=SECRET,
    )
    try:
        with live_server(app_settings, FAST) as base_url:
            yield schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    finally:
        keys = list(client.scan_iter(match=prefix + "*"))
        if keys:
            client.delete(*keys)
        client.close()


# One test per documented operation (the document is static: no server needed to list it):
# the JSON routes, the page and its sign-in form.
OPERATIONS = sorted(
    (path, method.upper()) for path, item in build_openapi()["paths"].items() for method in item
)


@pytest.mark.parametrize(("path", "method"), OPERATIONS)
def test_no_5xx_and_every_response_matches_the_document(
    api_schema: Any, path: str, method: str
) -> None:
    operation = api_schema[path][method]
    headers = bearer(token_for(USER, admin=True))
    calls: list[int] = []

    @given(case=operation.as_strategy())
    @settings(
        max_examples=40,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    def check(case: Any) -> None:
        response = case.call_and_validate(headers=headers, allow_redirects=False)
        calls.append(response.status_code)

    check()
    assert calls and max(calls) < 500
