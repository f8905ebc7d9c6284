"""The JSON routes: dashboard, audit, job runs, health and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

import anyio
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from dashboard_api.auth import Principal, bearer_token
from dashboard_api.dashboard import REDIS_ERRORS
from dashboard_api.params import (
    choice_param,
    decode_cursor,
    encode_cursor,
    int_param,
    market_value,
    single,
    symbol_value,
    time_bound_param,
)
from dashboard_api.problems import Problem
from dashboard_api.schemas import (
    AuditAsset,
    AuditCalculation,
    AuditResponse,
    Checks,
    JobsResponse,
    Readiness,
)
from dashboard_api.services import Services
from overnight_pipeline.core.audit import JOB_STATUSES
from overnight_pipeline.storage import queries
from overnight_pipeline.storage.db import DB_ERRORS, ping

JSON = "application/json"
PRIVATE = {"Cache-Control": "no-store"}
AUDIT_PAGE = (1, 100, 20)  # min, max, default
JOBS_PAGE = (1, 200, 50)


def services(request: Request) -> Services:
    found: Services = request.state.services
    return found


def api_principal(request: Request) -> Principal:
    """The caller, from `Authorization: Bearer` only (the cookie is for the page)."""
    token = bearer_token(request.headers.getlist("authorization"))
    return services(request).tokens.verify(token)


class DashboardEndpoint:
    """`GET /api/dashboard` as a pure ASGI endpoint, routed by Starlette like every route.

    The one hot route: it reads the `Authorization` headers straight from the scope and
    sends the two ASGI messages itself, without a `Request` or a `Response` object (what it
    costs to route it through Starlette rather than ahead of it: docs/PERFORMANCE.md).
    Errors are raised, so Starlette's exception handlers answer them as for every other
    route (401, 503, the bare 500).
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        found: Services = scope["state"]["services"]
        token = bearer_token(
            [v.decode("latin-1") for k, v in scope["headers"] if k == b"authorization"]
        )
        principal = found.tokens.verify(token)
        result = await found.dashboard.load(principal)
        body = result.body()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_DASHBOARD_HEADERS, (b"content-length", str(len(body)).encode())],
            }
        )
        await send(
            {"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body}
        )
        if result.repair is not None:
            # After the answer has gone out, as a background task would.
            await found.dashboard.refill(result.repair)


_DASHBOARD_HEADERS = [(b"content-type", JSON.encode()), (b"cache-control", b"no-store")]


async def audit_calculations(request: Request) -> Response:
    principal = api_principal(request)
    market = market_value(request.path_params["market"])
    symbol = symbol_value(request.path_params["symbol"])
    assert market is not None
    lo, hi, default = AUDIT_PAGE
    limit = int_param(request, "limit", default=default, lo=lo, hi=hi)
    cursor = decode_cursor(single(request, "cursor"), principal.user_id)

    def run(conn: Any) -> tuple[Any, list[queries.AssetCalculation]] | None:
        asset_id = queries.asset_id_for(conn, market=market, symbol=symbol)
        if asset_id is None:
            return None
        rows = queries.calculations_for_asset(
            conn, asset_id=asset_id, user_id=principal.user_id, limit=limit + 1, before=cursor
        )
        return asset_id, rows

    found = await services(request).db.run(run)
    if found is None:
        raise Problem(404, f"no asset {symbol!r} on market {market!r}", title="Unknown asset")
    asset_id, rows = found
    page, more = rows[:limit], len(rows) > limit
    body = AuditResponse(
        asset=AuditAsset(asset_id=asset_id, market=market, symbol=symbol),
        data=[
            AuditCalculation(
                correlation_id=r.correlation_id, score=r.score, calculated_at=r.calculated_at
            )
            for r in page
        ],
        next_cursor=encode_cursor(page[-1].cursor) if more else None,
    )
    return Response(body.model_dump_json(by_alias=True), media_type=JSON, headers=PRIVATE)


async def job_runs(request: Request) -> Response:
    principal = api_principal(request)
    if not principal.admin:
        raise Problem(403, "job runs are for administrators: this token has no 'admin' claim")
    market = market_value(single(request, "market"))
    status = choice_param(request, "status", JOB_STATUSES)
    lo, hi, default = JOBS_PAGE
    limit = int_param(request, "limit", default=default, lo=lo, hi=hi)
    before = time_bound_param(request, "before")

    def run(conn: Any) -> list[queries.JobRun]:
        return queries.recent_job_runs(
            conn, market=market, status=status, limit=limit, before=before
        )

    runs = await services(request).db.run(run)
    body = JobsResponse(data=runs)
    return Response(body.model_dump_json(by_alias=True), media_type=JSON, headers=PRIVATE)


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


async def readyz(request: Request) -> Response:
    svc = services(request)
    pg_ok, redis_ok = await asyncio.gather(_postgres_ok(svc), _redis_ok(svc))
    status = "unavailable" if not pg_ok else "ready" if redis_ok else "degraded"
    database = "sqlite" if svc.settings.is_sqlite else "postgresql"
    checks = {
        database: "ok" if pg_ok else "unreachable",
        "redis": "ok" if redis_ok else "unreachable",
    }
    body = Readiness(status=status, checks=Checks.model_validate(checks))
    return Response(
        body.model_dump_json(by_alias=True, exclude_none=True),
        status_code=200 if pg_ok else 503,
        media_type=JSON,
        headers={"Cache-Control": "no-store"},
    )


async def _postgres_ok(svc: Services) -> bool:
    try:
        with anyio.fail_after(svc.options.db_timeout):
            await svc.db.run(ping)
    except (*DB_ERRORS, Problem):
        return False
    return True


async def _redis_ok(svc: Services) -> bool:
    try:
        with anyio.fail_after(svc.options.redis_timeout * 2):
            await svc.redis.ping()
    except REDIS_ERRORS:
        return False
    return True
