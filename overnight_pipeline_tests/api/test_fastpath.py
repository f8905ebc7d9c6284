"""`GET /api/dashboard` is answered ahead of Starlette: it must answer exactly as the
declared Starlette route does, for every outcome."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient
from starlette.types import Receive, Scope, Send

from dashboard_api.app import create_app
from dashboard_api.dashboard import DashboardStore
from overnight_pipeline.settings import Settings, load_settings
from overnight_pipeline_tests.api.conftest import FAST, bearer, token_for
from overnight_pipeline_tests.api.factories import Planner
from overnight_pipeline_tests.api.live import live_server
from overnight_pipeline_tests.api.netfaults import closed_port

FRESH_HEADERS = (
    "content-type",
    "content-length",
    "cache-control",
    "www-authenticate",
    "retry-after",
)


class ThroughStarlette:
    """The same app with the fast path bypassed: Starlette's middleware, router and route."""

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await Starlette.__call__(self.app, scope, receive, send)


@pytest.fixture
def pair(settings: Settings) -> Iterator[Callable[..., tuple[TestClient, TestClient]]]:
    opened: list[TestClient] = []

    def make(**overrides: Any) -> tuple[TestClient, TestClient]:
        app_settings = load_settings(**{**settings.model_dump(), **overrides})
        fast = TestClient(create_app(app_settings, options=FAST), raise_server_exceptions=False)
        slow = TestClient(
            ThroughStarlette(create_app(app_settings, options=FAST)),
            raise_server_exceptions=False,
        )
        for client in (fast, slow):
            client.__enter__()
            opened.append(client)
        return fast, slow

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def same_answer(fast: TestClient, slow: TestClient, headers: dict[str, str]) -> int:
    a = fast.get("/api/dashboard", headers=headers)
    b = slow.get("/api/dashboard", headers=headers)
    assert (a.status_code, a.content) == (b.status_code, b.content)
    for name in FRESH_HEADERS:
        assert a.headers.get(name) == b.headers.get(name), name
    return a.status_code


def test_fast_path_answers_as_the_starlette_route(
    pair: Callable[..., tuple[TestClient, TestClient]],
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
) -> None:
    fast, slow = pair()
    hot, cold = new_user(seed=1), new_user(seed=2)
    cache(hot)
    assert same_answer(fast, slow, bearer(token_for(hot.user_id))) == 200  # cache hit
    # The first request refills the cache, so the second client sees a hit: compare the
    # data, then both from the cache.
    assert same_answer(fast, slow, bearer(token_for(uuid.uuid4()))) == 200  # unknown user
    first = fast.get("/api/dashboard", headers=bearer(token_for(cold.user_id))).json()
    assert first["data"]["fromCache"] is False
    assert same_answer(fast, slow, bearer(token_for(cold.user_id))) == 200  # refilled
    for bad in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic eA=="}):
        assert same_answer(fast, slow, bad) == 401


def test_fast_path_database_down_is_the_same_503(
    pair: Callable[..., tuple[TestClient, TestClient]],
) -> None:
    fast, slow = pair(database_url=f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/x")
    assert same_answer(fast, slow, bearer(token_for(uuid.uuid4()))) == 503


def test_fast_path_unexpected_error_is_a_bare_500(
    pair: Callable[..., tuple[TestClient, TestClient]], monkeypatch: pytest.MonkeyPatch
) -> None:
    fast, slow = pair()

    async def boom(self: DashboardStore, principal: object) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    monkeypatch.setattr(DashboardStore, "load", boom)
    assert same_answer(fast, slow, bearer(token_for(uuid.uuid4()))) == 500
    response = fast.get("/api/dashboard", headers=bearer(token_for(uuid.uuid4())))
    for leak in ("hunter2", "RuntimeError", "Traceback", ".py"):
        assert leak not in response.text


def test_other_methods_and_paths_still_go_through_starlette(client: TestClient) -> None:
    head = client.head("/api/dashboard", headers=bearer(token_for(uuid.uuid4())))
    assert head.status_code == 200 and head.content == b""
    assert client.post("/api/dashboard").status_code == 405
    assert client.get("/api/dashboard/", follow_redirects=False).status_code == 307


def test_served_as_in_production_a_cached_user_comes_from_redis(
    settings: Settings, new_user: Callable[..., Planner], cache: Callable[..., None]
) -> None:
    """uvloop + httptools, as `overnight serve`: the hit path really reads Redis there."""
    hot, cold = new_user(seed=3), new_user(seed=4)
    cache(hot)
    with live_server(settings, FAST, production=True) as base:
        for _ in range(3):
            got = httpx2.get(f"{base}/api/dashboard", headers=bearer(token_for(hot.user_id)))
            assert got.status_code == 200 and got.json()["data"]["fromCache"] is True
        first = httpx2.get(f"{base}/api/dashboard", headers=bearer(token_for(cold.user_id)))
        assert first.json()["data"]["fromCache"] is False
        again = httpx2.get(f"{base}/api/dashboard", headers=bearer(token_for(cold.user_id)))
        assert again.json()["data"]["fromCache"] is True
