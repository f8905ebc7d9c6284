"""RFC 9457 problem details: every error leaves as `application/problem+json`.

Handled errors (4xx, and the 503s this server decides on) keep their detail; anything else
becomes a bare 500 whose body says nothing about the code (the traceback goes to the log).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

import orjson
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from dashboard_api.auth import AuthError

PROBLEM_JSON = "application/problem+json"
log = logging.getLogger("dashboard_api")


class Problem(Exception):
    """An error this server answers on purpose, with a status and a human detail."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        title: str | None = None,
        type_: str = "about:blank",
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title or HTTPStatus(status).phrase
        self.type = type_
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


def invalid_param(name: str, value: object, reason: str) -> Problem:
    """400 naming the parameter and the value it got."""
    shown = value if isinstance(value, str | int | float | bool) or value is None else str(value)
    return Problem(
        400,
        f"{name}: {reason} (got {shown!r})",
        title="Invalid request parameter",
        extra={"invalidParams": [{"name": name, "reason": reason, "value": shown}]},
    )


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    """The JSON of a problem (RFC 9457)."""
    body = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        **(extra or {}),
    }
    return orjson.dumps(body)


def problem_response(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Response:
    return Response(
        problem_body(status, detail, title=title, type_=type_, extra=extra),
        status_code=status,
        headers=headers,
        media_type=PROBLEM_JSON,
    )


async def handle_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Problem)
    return problem_response(
        exc.status,
        exc.detail,
        title=exc.title,
        type_=exc.type,
        headers=exc.headers,
        extra=exc.extra,
    )


async def handle_auth_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, AuthError)
    return problem_response(
        401,
        exc.detail,
        title="Unauthorized",
        headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
    )


async def handle_http_exception(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405/413 and friends, as problems."""
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
    if exc.status_code == 404:
        detail = f"no route for {request.method} {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=headers)
    return problem_response(exc.status_code, detail, headers=headers)


async def handle_server_error(request: Request, exc: Exception) -> Response:
    """The catch-all: a fixed body, so no stack trace or message leaves the server."""
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return problem_response(500, "the server failed to answer this request; it has been logged")
