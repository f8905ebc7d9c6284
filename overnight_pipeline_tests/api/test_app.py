"""App-wide behaviour: problem JSON everywhere, the OpenAPI document, telemetry, the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
import uuid
from pathlib import Path

import httpx2
import jwt
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from sqlalchemy import Connection, Engine
from sqlalchemy.exc import DataError
from starlette.routing import Route
from starlette.testclient import TestClient

from dashboard_api.app import create_app
from dashboard_api.db import ThreadedDB
from dashboard_api.problems import Problem
from overnight_pipeline.settings import Settings
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline_tests.api.conftest import FAST, SECRET, bearer, token_for
from overnight_pipeline_tests.api.netfaults import closed_port

ROOT = Path(__file__).resolve().parents[2]


def test_unknown_routes_and_methods_are_problems(client: TestClient) -> None:
    missing = client.get("/api/nothing-here")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json() == {
        "type": "about:blank",
        "title": "Not Found",
        "status": 404,
        "detail": "no route for GET /api/nothing-here",
    }
    wrong = client.delete("/api/dashboard")
    assert wrong.status_code == 405
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD"}
    assert wrong.headers["content-type"] == "application/problem+json"
    assert client.get("/healthz").json() == {"status": "ok"}


def test_an_unexpected_error_is_a_bare_500_without_a_stack_trace(settings: Settings) -> None:
    app = create_app(settings, options=FAST)

    async def boom(request: object) -> None:
        raise RuntimeError("secret connection string postgres://admin:hunter2@db")

    app.router.routes.append(Route("/boom", boom))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom")
    assert response.status_code == 500
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["status"] == 500 and body["title"] == "Internal Server Error"
    for leak in ("hunter2", "RuntimeError", "Traceback", "boom", ".py"):
        assert leak not in response.text


def test_only_a_database_that_is_down_is_a_503(pg_engine: Engine) -> None:
    """A value the database refuses is this server's bug (the logged 500), not "unavailable"."""

    async def run(engine: Engine, sql: str) -> object:
        db = ThreadedDB(engine, limit=1, timeout=1.0)

        def query(conn: Connection) -> object:
            return conn.exec_driver_sql(sql).scalar()

        try:
            return await db.run(query)
        except Problem as problem:
            return problem.status

    assert asyncio.run(run(pg_engine, "SELECT 1")) == 1
    with pytest.raises(DataError):
        asyncio.run(run(pg_engine, "SELECT 'x'::int"))
    with pytest.raises(DataError):
        asyncio.run(run(pg_engine, "SELECT 1 / 0"))
    # The statement timeout (a query cancelled by the server) and an unreachable server.
    slow = "SET LOCAL statement_timeout = 50; SELECT pg_sleep(2)"
    assert asyncio.run(run(pg_engine, slow)) == 503
    dead = make_engine(f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/nowhere")
    assert asyncio.run(run(dead, "SELECT 1")) == 503
    dead.dispose()


def test_openapi_describes_every_json_route_and_its_errors(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.1")
    app_paths = {r.path for r in client.app.routes if isinstance(r, Route)}  # type: ignore[attr-defined]
    assert set(doc["paths"]) == app_paths
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if op["security"]:
                assert "401" in op["responses"], path
                assert "application/problem+json" in op["responses"]["401"]["content"]
            assert "200" in op["responses"] or "303" in op["responses"], (method, path)
    assert set(doc["paths"]["/login"]) == {"get", "post"} and set(doc["paths"]["/logout"]) == {
        "post"
    }
    assert "403" in doc["paths"]["/api/jobs"]["get"]["responses"]
    schemas = doc["components"]["schemas"]
    assert {"DashboardResponse", "AuditResponse", "JobsResponse", "ProblemDetails"} <= set(schemas)
    assert schemas["DashboardData"]["required"] == [
        "recommendations",
        "totalInvestable",
        "baseCurrency",
        "dataFreshness",
        "fromCache",
        "inputsChangedAt",
    ]


def status_code(span: ReadableSpan) -> object:
    """The response status, by the stable semantic conventions' name or the older one (the
    instrumentation's default until OTEL_SEMCONV_STABILITY_OPT_IN=http)."""
    attributes = span.attributes or {}
    return attributes.get("http.response.status_code", attributes.get("http.status_code"))


def test_each_request_is_a_server_span_named_by_its_route(settings: Settings) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = create_app(settings, options=FAST, tracer_provider=provider)
    with TestClient(app) as client:
        client.get("/api/dashboard", headers=bearer(token_for(uuid.uuid4())))
        client.get("/api/audit/assets/NYSE/KO/calculations")
        client.get("/readyz")
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {
        "GET /api/dashboard",
        "GET /api/audit/assets/{market}/{symbol}/calculations",
        "GET /readyz",
    }
    ok = spans["GET /api/dashboard"]
    assert ok.kind is SpanKind.SERVER and status_code(ok) == 200
    assert ok.attributes is not None and ok.attributes["http.route"] == "/api/dashboard"
    denied = spans["GET /api/audit/assets/{market}/{symbol}/calculations"]
    assert status_code(denied) == 401
    assert denied.status.status_code != StatusCode.ERROR  # a 4xx is the client's error


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ROOT / ".venv/bin/overnight"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "DASHBOARD_SECRET": SECRET, **(env or {})},
    )


def test_token_command_prints_the_jwt_alone() -> None:
    user = uuid.uuid4()
    done = _cli("token", str(user), "--admin", "--ttl", "30m")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1
    claims = jwt.decode(lines[0], SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user) and claims["admin"] is True
    assert claims["exp"] - claims["iat"] == 1800
    bad = _cli("token", "not-a-uuid")
    assert bad.returncode == 2 and "USER_ID must be a UUID (got 'not-a-uuid')" in bad.stderr
    assert bad.stdout == ""
    bad_ttl = _cli("token", str(user), "--ttl", "soon")
    assert bad_ttl.returncode == 2 and "'soon'" in bad_ttl.stderr


def test_serve_command_runs_the_app(pg_url: str, redis_prefix: str) -> None:
    port = closed_port()
    env = {
        "DATABASE_URL": pg_url,
        "CACHE_PREFIX": redis_prefix,
        "REDIS_URL": "redis://127.0.0.1:6379/0",
        "OTEL_TRACES_EXPORTER": "console",
    }
    proc = subprocess.Popen(
        [str(ROOT / ".venv/bin/overnight"), "serve", "--port", str(port)],
        env={**os.environ, "DASHBOARD_SECRET": SECRET, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                ready = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=1)
                break
            except httpx2.TransportError:
                assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
                assert time.monotonic() < deadline, "overnight serve did not start"
                time.sleep(0.1)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        user = uuid.uuid4()
        data = httpx2.get(
            f"http://127.0.0.1:{port}/api/dashboard", headers=bearer(token_for(user)), timeout=5
        ).json()
        assert data["data"]["recommendations"] == []
    finally:
        proc.terminate()
        output = proc.communicate(timeout=10)[0].decode()
    # uvicorn re-raises the SIGTERM after a clean shutdown; the lifespan closed the pools.
    assert proc.returncode in (0, -15), output
    assert "Application shutdown complete." in output
    # OTEL_TRACES_EXPORTER=console: the request spans were exported on the way out.
    assert '"name": "GET /api/dashboard"' in output and '"name": "GET /readyz"' in output


def test_cli_parser_lists_token_and_serve() -> None:
    from overnight_pipeline.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--port", "9000"])
    assert (args.host, args.port) == ("0.0.0.0", 9000)
    assert parser.parse_args(["token", str(uuid.uuid4()), "--ttl", "7d"]).ttl == 7 * 86400
