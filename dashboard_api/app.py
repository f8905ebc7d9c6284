"""`create_app(settings)`: the Starlette application (BEHAVIOUR §6)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
from opentelemetry import trace
from opentelemetry.instrumentation.asgi import OpenTelemetryMiddleware
from opentelemetry.trace import TracerProvider
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, Route
from starlette.types import Message, Receive, Scope, Send

from dashboard_api import api, views
from dashboard_api.auth import AuthError
from dashboard_api.metrics import AppMetrics
from dashboard_api.openapi import build_openapi
from dashboard_api.problems import (
    PROBLEM_JSON,
    Problem,
    handle_auth_error,
    handle_http_exception,
    handle_problem,
    handle_server_error,
    problem_body,
)
from dashboard_api.services import ApiOptions, open_services
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.settings import Settings

MAX_BODY_BYTES = 65_536
# No request of this API needs more. uvicorn's httptools parser buffers headers of any size
# (h11's limit does not apply to it), so the app refuses them itself (docs/OPERATIONS.md).
MAX_HEADER_BYTES = 16_384
MAX_URL_BYTES = 8_192

Endpoint = Callable[[Request], Awaitable[Response]]


def oversized(scope: Scope) -> Problem | None:
    """431/414 for a request whose headers or URL exceed what this API accepts."""
    size = 0
    for name, value in scope["headers"]:
        size += len(name) + len(value)
    if size > MAX_HEADER_BYTES:
        return Problem(431, f"the request headers are larger than {MAX_HEADER_BYTES} bytes")
    url = len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
    if url > MAX_URL_BYTES:
        return Problem(414, f"the URL is longer than {MAX_URL_BYTES} bytes")
    for name, value in scope["headers"]:
        if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
            return Problem(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
    return None


def limited(receive: Receive) -> Receive:
    """`receive` that refuses a body (chunked, without a length) past `MAX_BODY_BYTES`: the
    route's exception handler answers the 413 problem (Starlette's own limit answers text)."""
    total = 0

    async def receive_limited() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > MAX_BODY_BYTES:
                raise Problem(413, f"the request body is larger than {MAX_BODY_BYTES} bytes")
        return message

    return receive_limited


class DashboardApp(Starlette):
    """Starlette, refusing oversized requests before any routing (`oversized`, `limited`),
    and measuring every HTTP request around all of it (`metrics.RequestMetrics`, unless
    METRICS=off)."""

    metrics: AppMetrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        requests = self.metrics.requests
        if requests is not None and scope["type"] == "http":
            await requests.measure(self._handle, scope, receive, send)
        else:
            await self._handle(scope, receive, send)

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (problem := oversized(scope)) is not None:
            body = problem_body(problem.status, problem.detail, title=problem.title)
            await send(
                {
                    "type": "http.response.start",
                    "status": problem.status,
                    "headers": [
                        (b"content-type", PROBLEM_JSON.encode()),
                        (b"connection", b"close"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        await super().__call__(
            scope, limited(receive) if scope["type"] == "http" else receive, send
        )


def route_span_details(routes: list[BaseRoute]) -> Callable[[Scope], tuple[str, dict[str, str]]]:
    """Spans named by the route template (`GET /api/audit/assets/{market}/...`), never by
    the raw path, whose ids would make a name per user."""

    def details(scope: Scope) -> tuple[str, dict[str, str]]:
        method = scope.get("method", "HTTP")
        for route in routes:
            match, _ = route.matches(scope)
            if match is Match.FULL and isinstance(route, Route):
                return f"{method} {route.path}", {"http.route": route.path}
        return method, {}

    return details


def create_app(
    settings: Settings,
    *,
    options: ApiOptions | None = None,
    tracer_provider: TracerProvider | None = None,
    metrics_host: str = "127.0.0.1",
) -> DashboardApp:
    """The dashboard app; its lifespan opens the engine, the PostgreSQL and Redis pools (and
    with METRICS=PORT, the metrics server on `metrics_host`:PORT)."""
    options = options or ApiOptions()
    same_port = settings.metrics == "same"
    openapi_body = orjson.dumps(build_openapi(metrics=same_port))
    metrics = AppMetrics(
        settings.metrics,
        load_markets(settings.markets_file) if settings.metrics != "off" else {},
        ttl=options.metrics_ttl,
        clock=options.metrics_clock,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        services = await open_services(settings, options, cache_reads=metrics.cache_reads)
        try:
            metrics.bind(services, host=metrics_host)
            yield {"services": services}
        finally:
            metrics.unbind()
            await services.aclose()
            # Export what is still batched: uvicorn may end the process right after this.
            flush = getattr(tracer_provider, "force_flush", None)
            if flush is not None:
                flush()

    async def openapi(request: Request) -> Response:
        return Response(openapi_body, media_type="application/json")

    routes = _routes(openapi, metrics.endpoint if same_port else None)
    app = DashboardApp(
        routes=routes,
        middleware=_middleware(routes, tracer_provider),
        exception_handlers={
            Problem: handle_problem,
            AuthError: handle_auth_error,
            HTTPException: handle_http_exception,
            Exception: handle_server_error,
        },
        lifespan=lifespan,
    )
    app.metrics = metrics
    return app


def _routes(openapi: Endpoint, metrics: Endpoint | None) -> list[BaseRoute]:
    """Every route; `metrics`: `/metrics` on this port (METRICS=same)."""
    routes: list[BaseRoute] = [
        # The hot route first: the router tries routes in order.
        Route("/api/dashboard", api.DashboardEndpoint(), methods=["GET"], name="dashboard"),
        Route(
            "/api/audit/assets/{market}/{symbol}/calculations",
            api.audit_calculations,
            methods=["GET"],
            name="audit_calculations",
        ),
        Route("/api/jobs", api.job_runs, methods=["GET"], name="job_runs"),
        Route("/", views.page, methods=["GET"], name="page"),
        Route("/login", views.login, methods=["GET", "POST"], name="login"),
        Route("/logout", views.logout, methods=["POST"], name="logout"),
        Route("/healthz", api.healthz, methods=["GET"], name="healthz"),
        Route("/readyz", api.readyz, methods=["GET"], name="readyz"),
        Route("/openapi.json", openapi, methods=["GET"], name="openapi"),
    ]
    if metrics is not None:  # not behind the user token; METRICS=PORT serves it on its own port
        routes.append(Route("/metrics", metrics, methods=["GET"], name="metrics"))
    return routes


def _middleware(
    routes: list[BaseRoute], tracer_provider: TracerProvider | None
) -> list[Middleware]:
    """One server span per request (opentelemetry-instrumentation-asgi), only when spans go
    somewhere: with no exporter configured the middleware is not even in the stack."""
    traced = not isinstance(
        trace.get_tracer("dashboard_api", tracer_provider=tracer_provider), trace.NoOpTracer
    )
    if not traced:
        return []
    return [
        Middleware(
            OpenTelemetryMiddleware,
            tracer_provider=tracer_provider,
            default_span_details=route_span_details(list(routes)),
            exclude_spans=["receive", "send"],
        )
    ]
