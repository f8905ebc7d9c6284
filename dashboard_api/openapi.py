"""`/openapi.json`: every route (the JSON API, the page and its sign-in form) with its
parameters, responses and errors.

Schemas come from the pydantic models that also serialise the responses, so the document
cannot drift from what the server sends.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from dashboard_api.auth import COOKIE_NAME
from dashboard_api.params import CURSOR_PATTERN, MARKET_PATTERN, SYMBOL_PATTERN
from dashboard_api.problems import PROBLEM_JSON
from dashboard_api.schemas import AuditResponse, Health, JobsResponse, ProblemDetails, Readiness
from overnight_pipeline.core.audit import JOB_STATUSES
from overnight_pipeline.core.payloads import DashboardResponse

_MODELS: tuple[type[BaseModel], ...] = (
    DashboardResponse,
    AuditResponse,
    JobsResponse,
    Health,
    Readiness,
    ProblemDetails,
)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json(model: type[BaseModel], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(model)}}}


def _problem(description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "description": description,
        "content": {PROBLEM_JSON: {"schema": _ref(ProblemDetails)}},
    }
    if headers:
        out["headers"] = headers
    return out


_UNAUTHORIZED = _problem(
    "Missing, malformed, wrongly signed or expired token, or a token without `sub`/`exp`.",
    {"WWW-Authenticate": {"schema": {"type": "string"}}},
)
_UNAVAILABLE = _problem(
    "The database is unreachable and the answer needs it.",
    {"Retry-After": {"schema": {"type": "string"}}},
)
_BAD_PARAM = _problem("A parameter is invalid; `detail` and `invalidParams` name it and its value.")


_HTML = {"text/html": {"schema": {"type": "string"}}}
_REDIRECT = {"description": "See Other.", "headers": {"Location": {"schema": {"type": "string"}}}}
_CROSS_SITE = _problem("A form posted from another origin (login CSRF) is refused.")
_TOO_LARGE = _problem("The form is larger than the server accepts.")
_COOKIE = {
    "name": COOKIE_NAME,
    "in": "cookie",
    "required": False,
    "schema": {"type": "string", "maxLength": 4096},
    "description": "The token the sign-in form set (HttpOnly).",
}


def _page_paths() -> dict[str, Any]:
    """The server-rendered page: HTML answers, redirects, and problems for refused posts."""
    form = {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "properties": {"token": {"type": "string", "maxLength": 4096}},
                }
            }
        },
    }
    return {
        "/": {
            "get": {
                "operationId": "page",
                "summary": "The dashboard page; without a valid cookie, a redirect to sign in.",
                "security": [],
                "parameters": [_COOKIE],
                "responses": {
                    "200": {"description": "The page.", "content": _HTML},
                    "303": _REDIRECT,
                    "503": _UNAVAILABLE,
                },
            }
        },
        "/login": {
            "get": {
                "operationId": "loginForm",
                "summary": "The sign-in form.",
                "security": [],
                "responses": {"200": {"description": "The form.", "content": _HTML}},
            },
            "post": {
                "operationId": "login",
                "summary": "Sign in with a token: sets the cookie and redirects to the page.",
                "security": [],
                "requestBody": form,
                "responses": {
                    "303": _REDIRECT,
                    "400": {"description": "A malformed form, on the form.", "content": _HTML},
                    "401": {"description": "A token that does not work.", "content": _HTML},
                    "403": _CROSS_SITE,
                    "413": _TOO_LARGE,
                },
            },
        },
        "/logout": {
            "post": {
                "operationId": "logout",
                "summary": "Sign out: clears the cookie.",
                "security": [],
                "responses": {"303": _REDIRECT, "403": _CROSS_SITE},
            }
        },
    }


def _query(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
    }


def build_openapi(*, metrics: bool = True) -> dict[str, Any]:
    """The document; `metrics`: `/metrics` is served on this port (METRICS=same)."""
    paths: dict[str, Any] = {
        **_api_paths(),
        **_service_paths(),
        **_page_paths(),
    }
    if metrics:
        paths["/metrics"] = _metrics_path()
    return {"openapi": "3.1.0", "info": _info(), "paths": paths, "components": _components()}


def _info() -> dict[str, Any]:
    return {
        "title": "Overnight dashboard API",
        "version": "1",
        "description": (
            "Pre-computed buy recommendations (BEHAVIOUR §6). Errors are RFC 9457 problem "
            "details (`application/problem+json`). Authenticate with "
            "`Authorization: Bearer <JWT>` (HS256; `sub` = user id; `exp` required)."
        ),
    }


def _components() -> dict[str, Any]:
    """The response models' schemas (from pydantic) and the bearer token scheme."""
    _, defs = models_json_schema(
        [(m, "serialization") for m in _MODELS],
        by_alias=True,
        ref_template="#/components/schemas/{model}",
    )
    return {
        "schemas": defs["$defs"],
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
        },
    }


_SECURED: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _api_paths() -> dict[str, Any]:
    """The JSON API behind the user's token: the dashboard, the audit trail, the job runs."""
    return {
        "/api/dashboard": {"get": _dashboard_operation()},
        "/api/audit/assets/{market}/{symbol}/calculations": {"get": _audit_operation()},
        "/api/jobs": {"get": _jobs_operation()},
    }


def _dashboard_operation() -> dict[str, Any]:
    return {
        "operationId": "getDashboard",
        "summary": "The caller's recommendations: Redis first, PostgreSQL on a miss.",
        "description": (
            "`fromCache` says where the answer came from. A user without computed "
            "recommendations gets an empty list and `dataFreshness: null` (with "
            "`baseCurrency` empty when the user is not loaded either). "
            "`inputsChangedAt` is set when the user's inputs changed after the "
            "served result was generated: the last result is served, flagged, until "
            "the recalculation lands."
        ),
        "security": _SECURED,
        "responses": {
            "200": _json(DashboardResponse, "The dashboard data."),
            "401": _UNAUTHORIZED,
            "503": _UNAVAILABLE,
        },
    }


def _audit_operation() -> dict[str, Any]:
    return {
        "operationId": "getAssetCalculations",
        "summary": "The caller's calculations that scored an asset, newest first.",
        "security": _SECURED,
        "parameters": [
            _in_path("market", MARKET_PATTERN),
            _in_path("symbol", SYMBOL_PATTERN),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
                "Page size.",
            ),
            _query(
                "cursor",
                {"type": "string", "pattern": CURSOR_PATTERN},
                "`nextCursor` of the previous page; a value off this pattern is a 400.",
            ),
        ],
        "responses": {
            "200": _json(AuditResponse, "One page of calculations."),
            "400": _BAD_PARAM,
            "401": _UNAUTHORIZED,
            "404": _problem("No such asset, or a path that matches no route."),
            "503": _UNAVAILABLE,
        },
    }


def _jobs_operation() -> dict[str, Any]:
    return {
        "operationId": "listJobRuns",
        "summary": "Recent overnight job runs (admin tokens only).",
        "security": _SECURED,
        "parameters": [
            _query("market", {"type": "string", "pattern": MARKET_PATTERN}, "Only this market."),
            _query(
                "status",
                {"type": "string", "enum": list(JOB_STATUSES)},
                "Only runs in this status.",
            ),
            _query(
                "limit",
                {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                "Page size.",
            ),
            _query(
                "before",
                {"type": "string", "format": "date-time"},
                (
                    "Only runs started before this time (the last `startedAt` of a "
                    "page), with its UTC offset. A time past the calendar's ends in "
                    "UTC (year 1 at +14:00, year 9999 at -14:00) bounds as that end."
                ),
            ),
        ],
        "responses": {
            "200": _json(JobsResponse, "Job runs, newest start first."),
            "400": _BAD_PARAM,
            "401": _UNAUTHORIZED,
            "403": _problem("The token has no `admin` claim."),
            "503": _UNAVAILABLE,
        },
    }


def _in_path(name: str, pattern: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string", "pattern": pattern},
    }


def _service_paths() -> dict[str, Any]:
    """What any client may ask without a token: liveness, readiness, this document."""
    return {
        "/healthz": {
            "get": {
                "operationId": "health",
                "summary": "The process is up.",
                "security": [],
                "responses": {"200": _json(Health, "Up.")},
            }
        },
        "/readyz": {
            "get": {
                "operationId": "readiness",
                "summary": (
                    "The app database (`checks.postgresql`, or `checks.sqlite`) and Redis "
                    "reachable; Redis down is `degraded`, still ready."
                ),
                "security": [],
                "responses": {
                    "200": _json(Readiness, "Ready or degraded."),
                    "503": _json(Readiness, "The app database is unreachable."),
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "security": [],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _metrics_path() -> dict[str, Any]:
    return {
        "get": {
            "operationId": "metrics",
            "summary": (
                "Prometheus metrics (text format; OpenMetrics when asked for in `Accept`): "
                "per-market readiness and run outcomes, cache reads by result, requests "
                "by route and status, their durations, the Redis breaker's state. No user "
                "id in any label; METRICS=off or a port of its own removes it from here."
            ),
            "security": [],
            "responses": {
                "200": {
                    "description": "The metrics.",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            },
        }
    }
