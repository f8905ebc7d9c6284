"""One OpenTelemetry server span per HTTP request (a pure ASGI middleware).

Named `METHOD /route/{template}` once routing has matched, with the stable HTTP semantic
attributes; 5xx responses mark the span as an error. With a no-op tracer (`overnight serve`
when no exporter is configured) the middleware passes requests straight through; otherwise
the exporter follows the `OTEL_*` variables of whatever SDK setup the process has.
`GET /api/dashboard` does not come through here: `fastpath` makes the same span itself.
"""

from __future__ import annotations

from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, TracerProvider
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class TelemetryMiddleware:
    def __init__(self, app: ASGIApp, tracer_provider: TracerProvider | None = None) -> None:
        self.app = app
        self.tracer = trace.get_tracer("dashboard_api", tracer_provider=tracer_provider)
        # No exporter configured: the no-op span would record nothing, so skip even that.
        self.traced = not isinstance(self.tracer, trace.NoOpTracer)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.traced:
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        with self.tracer.start_as_current_span(
            method,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": scope["path"]},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            status_code = 500

            async def send_wrapper(message: Message) -> None:
                nonlocal status_code
                if message["type"] == "http.response.start":
                    status_code = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, send_wrapper)
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            finally:
                route: Any = scope.get("route")
                template = getattr(route, "path", None)
                if template:
                    span.update_name(f"{method} {template}")
                    span.set_attribute("http.route", template)
                span.set_attribute("http.response.status_code", status_code)
                if status_code >= 500:
                    span.set_status(Status(StatusCode.ERROR, f"HTTP {status_code}"))
