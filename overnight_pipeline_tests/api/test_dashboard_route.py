"""`GET /api/dashboard`: one pure-ASGI endpoint, routed, described and error-handled by
Starlette like every other route."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import httpx2
import pytest
from starlette.applications import Starlette
from starlette.routing import Route
from starlette.testclient import TestClient

from dashboard_api.api import DashboardEndpoint
from dashboard_api.dashboard import DashboardStore
from overnight_pipeline.settings import Settings
from overnight_pipeline_tests.api.conftest import FAST, bearer, token_for
from overnight_pipeline_tests.api.live import live_server
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.support.stored_results import Planner


def test_the_route_is_the_pure_asgi_endpoint_known_to_the_route_table(
    client: TestClient,
) -> None:
    app = client.app
    assert isinstance(app, Starlette)
    found = [r for r in app.routes if isinstance(r, Route) and r.path == "/api/dashboard"]
    assert len(found) == 1 and isinstance(found[0].endpoint, DashboardEndpoint)
    assert found[0].name == "dashboard" and app.url_path_for("dashboard") == "/api/dashboard"
    assert "/api/dashboard" in client.get("/openapi.json").json()["paths"]


def test_errors_are_answered_by_the_apps_problem_handlers(client: TestClient) -> None:
    for bad in ({}, {"Authorization": "Bearer not-a-jwt"}, {"Authorization": "Basic eA=="}):
        response = client.get("/api/dashboard", headers=bad)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
        assert response.json()["title"] == "Unauthorized"


def test_database_down_is_a_503_problem(make_client: Callable[..., TestClient]) -> None:
    client = make_client(database_url=f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/x")
    response = client.get("/api/dashboard", headers=bearer(token_for(uuid.uuid4())))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == "5"


def test_unexpected_error_is_a_bare_500(
    make_client: Callable[..., TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = make_client(raise_server_exceptions=False)

    async def boom(self: DashboardStore, principal: object) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    monkeypatch.setattr(DashboardStore, "load", boom)
    response = client.get("/api/dashboard", headers=bearer(token_for(uuid.uuid4())))
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
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
