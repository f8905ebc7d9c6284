"""`GET /api/dashboard` as a pure ASGI handler, ahead of Starlette's routing.

The dashboard is the one hot route. Through Starlette it crossed five middleware layers,
each wrapping `send`, plus the router, a `Request` and a `Response` object: ≈ 40 % of a cache
hit's CPU (docs/PERFORMANCE.md). Here it is one function: it reads the `Authorization`
headers straight from the scope, does exactly what `api.dashboard` does (the same token
verifier, the same `DashboardStore`, the same problem bodies and span), and sends the two
ASGI messages itself. Every other method, path or scope goes through Starlette unchanged.
"""

from __future__ import annotations

import logging
from typing import Any

from opentelemetry.trace import NoOpTracer, SpanKind, Status, StatusCode, Tracer
from starlette.types import Receive, Scope, Send

from dashboard_api.auth import AuthError, bearer_token
from dashboard_api.problems import PROBLEM_JSON, Problem, problem_body
from dashboard_api.services import Services

log = logging.getLogger("dashboard_api")

PATH = "/api/dashboard"
ROUTE = "/api/dashboard"
SPAN_NAME = f"GET {ROUTE}"
_JSON_HEADERS = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]
_UNAUTHORIZED_HEADERS = [
    (b"content-type", PROBLEM_JSON.encode()),
    (b"www-authenticate", b'Bearer error="invalid_token"'),
]
_SERVER_ERROR = "the server failed to answer this request; it has been logged"


def handles(scope: Scope) -> bool:
    """True for the requests this handler answers: `GET /api/dashboard`, no root path."""
    return (
        scope["type"] == "http"
        and scope["path"] == PATH
        and scope["method"] == "GET"
        and not scope.get("root_path")
    )


def tracing(tracer: Tracer) -> bool:
    """False when spans go nowhere (no exporter configured): the span is then skipped."""
    return not isinstance(tracer, NoOpTracer)


class DashboardEndpoint:
    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.traced = tracing(tracer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.traced:
            await self.answer(scope, send)
            return
        with self.tracer.start_as_current_span(
            SPAN_NAME,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": "GET",
                "url.path": PATH,
                "http.route": ROUTE,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            status = 500
            try:
                status = await self.answer(scope, send)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status}"))

    async def answer(self, scope: Scope, send: Send) -> int:
        """Send the response; return its status."""
        try:
            services: Services = scope["state"]["services"]
            store = services.dashboard
            token = bearer_token(
                [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
            )
            principal = services.tokens.verify(token)
            result = await store.load(principal)
            body = result.body()
        except AuthError as exc:
            await send_response(
                send,
                401,
                _UNAUTHORIZED_HEADERS,
                problem_body(401, exc.detail, title="Unauthorized"),
            )
            return 401
        except Problem as exc:
            headers = [(b"content-type", PROBLEM_JSON.encode())]
            headers += [
                (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()
            ]
            await send_response(
                send,
                exc.status,
                headers,
                problem_body(
                    exc.status, exc.detail, title=exc.title, type_=exc.type, extra=exc.extra
                ),
            )
            return exc.status
        except Exception as exc:
            # As Starlette's catch-all: a fixed body out, the traceback to the log.
            log.error("unhandled error on GET %s", PATH, exc_info=exc)
            headers = [(b"content-type", PROBLEM_JSON.encode())]
            await send_response(send, 500, headers, problem_body(500, _SERVER_ERROR))
            raise
        await send_response(send, 200, _JSON_HEADERS, body)
        if result.repair is not None:
            # After the answer has gone out, as Starlette's BackgroundTask did.
            await store.refill(result.repair)
        return 200


async def send_response(
    send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> None:
    start: dict[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    }
    await send(start)
    await send({"type": "http.response.body", "body": body})
