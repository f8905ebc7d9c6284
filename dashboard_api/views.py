"""The server-rendered page (Jinja2, no JavaScript) and its small login form.

The page authenticates with the same JWT as the API, kept in an HttpOnly cookie that the
login form sets. It reads through the same cache-first path as `GET /api/dashboard` (whose
gate has validated both documents) and builds the core's models from them for the template.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from jinja2 import pass_context
from pydantic import ValidationError
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.templating import Jinja2Templates

from dashboard_api.api import services
from dashboard_api.auth import COOKIE_NAME, AuthError, Principal
from dashboard_api.dashboard import DashboardResult
from dashboard_api.presentation import ago, build_page, reader_locale
from dashboard_api.problems import Problem
from overnight_pipeline.core.payloads import CachedPortfolioSummary, CachedRecommendations
from overnight_pipeline.storage import queries

log = logging.getLogger("dashboard_api")
STALE_AFTER = timedelta(hours=24)
MAX_FORM_BYTES = 16_384
HTML_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

templates = Jinja2Templates(directory=Path(__file__).parent / "templates")


@pass_context
def _template_url_for(context: dict[str, Any], name: str, /) -> str:
    """`url_for` in templates: the form actions are relative too (`local_path`)."""
    return local_path(context["request"], name)


templates.env.globals["url_for"] = _template_url_for


@dataclass(frozen=True)
class Freshness:
    state: str  # "fresh" | "updating" | "stale" | "none"
    label: str  # the badge text
    generated_at: datetime | None
    changed: bool = False  # the user's inputs changed after the result shown (a long label)


def freshness(
    generated_at: str | None, now: datetime, inputs_changed_at: str | None = None
) -> Freshness:
    """The badge: "updating" instead of "fresh" when the inputs changed after the result
    (`inputsChangedAt`); a stale result stays flagged stale, and says the change too."""
    changed = None
    if inputs_changed_at is not None:
        moment = datetime.fromisoformat(inputs_changed_at).astimezone(UTC)
        changed = f"your portfolio changed {ago(now - moment)}"
    if generated_at is None:
        if changed:
            return Freshness("updating", f"Updating · {changed}", None, changed=True)
        return Freshness("none", "No data yet", None)
    stamp = datetime.fromisoformat(generated_at).astimezone(UTC)
    age = now - stamp
    if age >= STALE_AFTER:
        if changed:
            return Freshness(
                "stale", f"Stale · generated {ago(age)} · {changed}", stamp, changed=True
            )
        return Freshness("stale", f"Stale · generated {ago(age)}", stamp)
    if changed:
        return Freshness("updating", f"Updating · {changed}", stamp, changed=True)
    return Freshness("fresh", f"Fresh · generated {ago(age)}", stamp)


def _page_principal(request: Request) -> Principal | None:
    token = request.cookies.get(COOKIE_NAME)
    if not token:
        return None
    try:
        return services(request).tokens.verify(token)
    except AuthError:
        return None


def local_path(request: Request, name: str) -> str:
    """A route's path on this server, for redirects: relative, never built from the request's
    `Host` header, which the client chooses (`Host: evil.example` must not send the
    browser there after signing in)."""
    root: str = request.scope.get("app_root_path", request.scope.get("root_path", ""))
    path: str = request.app.url_path_for(name)
    return root.rstrip("/") + path


def _to_login(request: Request) -> Response:
    response = RedirectResponse(local_path(request, "login"), status_code=303)
    if request.cookies.get(COOKIE_NAME):
        response.delete_cookie(COOKIE_NAME, path="/")
    return response


async def page(request: Request) -> Response:
    principal = _page_principal(request)
    if principal is None:
        return _to_login(request)
    store = services(request).dashboard
    result = await store.load(principal)
    try:
        recs, portfolio = _validated(result)
    except ValidationError as exc:
        # The gate let through what the models refuse: a bug, but never a 500 for the reader.
        log.error(
            "cached documents of %s passed the gate but not the models: %s",
            principal.user_key,
            exc.errors(include_url=False, include_input=False)[:1],
        )
        result = await store.from_database(principal)
        try:
            recs, portfolio = _validated(result)
        except ValidationError:
            raise Problem(
                503, "stored recommendations are in a format this server cannot read"
            ) from None
    classes: dict[uuid.UUID, str] = {}
    if recs is not None and recs.recommendations:
        uid = principal.user_id
        classes = await services(request).db.run(
            lambda conn: queries.holding_classes(conn, user_id=uid)
        )
    context = {
        "user_id": principal.user_key,
        "result": result,
        "recs": recs,
        "view": build_page(
            locale=reader_locale(request.headers.get("accept-language")),
            total_investable=result.total_investable,
            base_currency=result.base_currency,
            recs=recs,
            portfolio=portfolio,
            classes=classes,
        ),
        "freshness": freshness(result.generated_at, datetime.now(UTC), result.inputs_changed_at),
    }
    refill = BackgroundTask(store.refill, result.repair) if result.repair is not None else None
    response = templates.TemplateResponse(request, "dashboard.html", context, headers=HTML_HEADERS)
    response.background = refill
    return response


def _validated(
    result: DashboardResult,
) -> tuple[CachedRecommendations | None, CachedPortfolioSummary | None]:
    if result.recs is None or result.portfolio is None:
        return None, None
    return (
        CachedRecommendations.model_validate(result.recs),
        CachedPortfolioSummary.model_validate(result.portfolio),
    )


def _same_origin(request: Request) -> None:
    """Refuse cross-site form posts (login CSRF): a browser always sends Origin on POST."""
    origins = request.headers.getlist("origin")
    if not origins or origins == ["null"]:
        return
    try:
        netloc = urlsplit(origins[0]).netloc if len(origins) == 1 else None
    except ValueError:  # "http://[::1" and friends
        netloc = None
    if netloc is None or netloc != request.headers.get("host"):
        shown = origins[0][:200]
        raise Problem(403, f"cross-site form post from {shown!r} refused")


async def login(request: Request) -> Response:
    if request.method == "GET":
        return _login_form(request)
    _same_origin(request)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise Problem(413, f"the form is larger than {MAX_FORM_BYTES} bytes")
    # Other fields are ignored; MAX_FORM_BYTES bounds how many there can be.
    try:
        fields: dict[str, Any] = parse_qs(body.decode("utf-8"))
    except UnicodeDecodeError:
        return _login_form(request, error="The form was not sent as UTF-8.", status=400)
    tokens = fields.get("token") or [""]
    if len(tokens) > 1:
        return _login_form(request, error="Paste one token, not several.", status=400)
    token = tokens[0].strip()
    if not token:
        return _login_form(request, error="Paste the token that `overnight token` printed.")
    try:
        principal = services(request).tokens.verify(token)
    except AuthError as exc:
        return _login_form(request, error=f"That token does not work: {exc.detail}.")
    response = RedirectResponse(local_path(request, "page"), status_code=303)
    lifetime = principal.expires_at - datetime.now(UTC)
    response.set_cookie(
        COOKIE_NAME,
        token,
        max_age=max(1, int(lifetime.total_seconds())),
        path="/",
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
    )
    return response


async def logout(request: Request) -> Response:
    _same_origin(request)
    response = RedirectResponse(local_path(request, "login"), status_code=303)
    response.delete_cookie(COOKIE_NAME, path="/")
    return response


def _login_form(request: Request, error: str | None = None, *, status: int = 401) -> Response:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"error": error},
        status_code=status if error else 200,
        headers=HTML_HEADERS,
    )
