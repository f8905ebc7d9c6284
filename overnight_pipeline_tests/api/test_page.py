"""The server-rendered page, its login form and the freshness badge."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from dashboard_api import views
from dashboard_api.auth import COOKIE_NAME
from dashboard_api.views import ago, freshness
from overnight_pipeline_tests.api.conftest import token_for
from overnight_pipeline_tests.support.stored_results import Planner

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def badge(html: str) -> tuple[str, str]:
    found = re.search(r'<span class="badge (\w+)" id="freshness"[^>]*>([^<]*)</span>', html)
    assert found, html[:500]
    return found.group(1), found.group(2)


def login(client: TestClient, user: uuid.UUID) -> None:
    response = client.post("/login", data={"token": token_for(user)}, follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].endswith("/")
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE_NAME}=")
    assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Path=/" in cookie


@pytest.mark.parametrize(
    ("delta", "words"),
    [
        (timedelta(seconds=20), "just now"),
        (timedelta(minutes=1, seconds=5), "1 minute ago"),
        (timedelta(minutes=42), "42 minutes ago"),
        (timedelta(hours=1), "1 hour ago"),
        (timedelta(hours=3, minutes=29), "3 hours ago"),
        (timedelta(hours=3, minutes=31), "4 hours ago"),  # Babel rounds to the nearest unit
        (timedelta(hours=26), "26 hours ago"),
        (timedelta(days=3, hours=2), "3 days ago"),
        (timedelta(seconds=-30), "just now"),
    ],
)
def test_ago_speaks_the_readers_language(delta: timedelta, words: str) -> None:
    assert ago(delta) == words


def test_freshness_is_fresh_below_24_hours_and_stale_from_24() -> None:
    assert freshness(None, NOW).label == "No data yet"
    fresh = freshness((NOW - timedelta(hours=3)).isoformat(), NOW)
    assert (fresh.state, fresh.label) == ("fresh", "Fresh · generated 3 hours ago")
    edge = freshness((NOW - timedelta(hours=24)).isoformat(), NOW)
    assert (edge.state, edge.label) == ("stale", "Stale · generated 24 hours ago")
    almost = freshness((NOW - timedelta(hours=23, minutes=59)).isoformat(), NOW)
    assert almost.state == "fresh"


def test_freshness_says_updating_when_the_inputs_changed_after_the_result() -> None:
    generated = (NOW - timedelta(hours=3)).isoformat()
    changed = (NOW - timedelta(minutes=2)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    updating = freshness(generated, NOW, changed)
    assert (updating.state, updating.label) == (
        "updating",
        "Updating · your portfolio changed 2 minutes ago",
    )
    assert updating.changed and updating.generated_at == NOW - timedelta(hours=3)
    # A day-old result stays flagged stale, and says the change too.
    stale = freshness((NOW - timedelta(hours=30)).isoformat(), NOW, changed)
    assert (stale.state, stale.label) == (
        "stale",
        "Stale · generated 30 hours ago · your portfolio changed 2 minutes ago",
    )
    nothing_yet = freshness(None, NOW, changed)
    assert (nothing_yet.state, nothing_yet.label, nothing_yet.generated_at) == (
        "updating",
        "Updating · your portfolio changed 2 minutes ago",
        None,
    )
    assert not freshness(generated, NOW, None).changed


def test_page_without_a_cookie_redirects_to_the_login_form(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].endswith("/login")
    form = client.get("/login")
    assert form.status_code == 200 and 'name="token"' in form.text
    assert "default-src 'none'" in form.headers["content-security-policy"]
    assert "<script" not in form.text


def test_login_then_page_shows_table_bars_and_a_fresh_badge(
    client: TestClient, new_user: Callable[..., Planner], cache: Callable[..., None]
) -> None:
    p = new_user(hours_ago=3)
    cache(p)
    login(client, p.user_id)
    page = client.get("/")
    assert page.status_code == 200
    assert badge(page.text) == ("fresh", "Fresh · generated 3 hours ago")
    rows = re.findall(
        r'<tr><th scope="row" data-label="Asset">(S\d+)</th><td class="wide" data-label="Class">'
        r"([^<]+)</td>",
        page.text,
    )
    assert rows == [(r.symbol, p.asset_class(r.asset_id)) for r in p.recs.recommendations]
    bars = re.findall(r'<div class="alloc (\w+)" data-class="([^"]+)">', page.text)
    assert [name for _, name in bars] == ["US Stocks", "Brazil", "Bonds"]
    assert "$20,000.00" in page.text and "served from cache" in page.text
    assert "<script" not in page.text


def cells(html: str, label: str) -> list[str]:
    return re.findall(rf'<td class="num[^"]*" data-label="{label}">([^<]*)</td>', html)


def test_figures_follow_the_readers_locale_and_metrics_read_as_words(
    client: TestClient, new_user: Callable[..., Planner]
) -> None:
    p = new_user(hours_ago=3)
    login(client, p.user_id)
    english = client.get("/").text
    amounts = [f"${Decimal(r.amount):,.2f}" for r in p.recs.recommendations]
    assert cells(english, "Amount") == amounts
    scores = cells(english, "Score")
    assert scores == [format(Decimal(r.score).normalize(), "f") for r in p.recs.recommendations]
    assert not any(s.endswith(".0000") for s in scores)
    assert all(re.fullmatch(r"[+-]\d+(\.\d{1,2})? pp", g) for g in cells(english, "Class gap"))
    assert "Dividend yield" in english and "dividend_yield" not in english
    brazil = client.get("/", headers={"Accept-Language": "pt-BR,pt;q=0.9,en;q=0.5"}).text
    first = Decimal(p.recs.recommendations[0].amount)
    whole, cents = f"{first:,.2f}".replace(",", ".").rsplit(".", 1)
    assert cells(brazil, "Amount")[0] == f"US$\xa0{whole},{cents}"
    assert "US$\xa020.000,00" in brazil


def test_a_user_with_nothing_yet_reads_words_not_a_bare_zero(client: TestClient) -> None:
    login(client, uuid.uuid4())
    page = client.get("/").text
    total = re.search(r'id="total-investable">([^<]*)<', page)
    assert total and total.group(1) == "No contribution set yet"
    assert "No recommendations yet" in page and "0 <" not in page


def test_graphics_and_text_meet_wcag_contrast_against_white() -> None:
    css = (Path(views.__file__).parent / "templates/base.html").read_text()
    colours = dict(re.findall(r"--([\w-]+): (#[0-9a-f]{6})", css))
    white = colours["card"]
    for graphic in ("scale", "band", "within", "below", "above"):  # WCAG 1.4.11: 3:1
        assert contrast(colours[graphic], white) >= 3.0, graphic
    # 1.4.3: 4.5:1 (badges: white text)
    for text in ("ink", "muted", "fresh", "stale", "none", "updating"):
        assert contrast(colours[text], white) >= 4.5, text
        assert contrast(colours[text], colours["page"]) >= 4.5, text


def contrast(a: str, b: str) -> float:
    def luminance(colour: str) -> float:
        rgb = [int(colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    hi, lo = sorted([luminance(a), luminance(b)], reverse=True)
    return (hi + 0.05) / (lo + 0.05)


def test_stale_and_no_data_badges(client: TestClient, new_user: Callable[..., Planner]) -> None:
    stale = new_user(hours_ago=30)
    login(client, stale.user_id)
    assert badge(client.get("/").text) == ("stale", "Stale · generated 30 hours ago")
    login(client, uuid.uuid4())
    page = client.get("/")
    assert badge(page.text) == ("none", "No data yet") and 'id="no-data"' in page.text


def test_login_with_a_bad_token_re_renders_the_form_with_401(client: TestClient) -> None:
    response = client.post("/login", data={"token": "nope"}, follow_redirects=False)
    assert response.status_code == 401 and "That token does not work" in response.text
    # Announced, and tied to its field.
    assert '<p class="error" id="login-error" role="alert">' in response.text
    assert 'aria-describedby="login-error token-help" aria-invalid="true"' in response.text
    assert "set-cookie" not in response.headers
    empty = client.post("/login", data={"token": ""})
    assert empty.status_code == 401


def test_cross_site_form_posts_are_refused(client: TestClient) -> None:
    response = client.post(
        "/login",
        data={"token": token_for(uuid.uuid4())},
        headers={"Origin": "https://evil.example"},
        follow_redirects=False,
    )
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "set-cookie" not in response.headers


def test_logout_clears_the_cookie(client: TestClient) -> None:
    login(client, uuid.uuid4())
    response = client.post("/logout", follow_redirects=False)
    assert response.status_code == 303
    assert f'{COOKIE_NAME}=""' in response.headers["set-cookie"]
    assert client.get("/", follow_redirects=False).status_code == 303


def test_an_expired_cookie_sends_you_back_to_login(client: TestClient) -> None:
    client.cookies.set(COOKIE_NAME, "not-a-token")
    response = client.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"].endswith("/login")


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8443", "evil.example/x", "a@evil"])
def test_redirects_never_follow_a_forged_host_header(client: TestClient, host: str) -> None:
    forged = {"host": host}
    signed_in = client.post(
        "/login", data={"token": token_for(uuid.uuid4())}, headers=forged, follow_redirects=False
    )
    assert signed_in.status_code == 303 and signed_in.headers["location"] == "/"
    page = client.get("/", headers=forged, follow_redirects=False)
    assert page.status_code == 200 and 'action="/logout"' in page.text and "evil" not in page.text
    signed_out = client.post("/logout", headers=forged, follow_redirects=False)
    assert signed_out.status_code == 303 and signed_out.headers["location"] == "/login"
    to_login = client.get("/", headers=forged, follow_redirects=False)
    assert to_login.status_code == 303 and to_login.headers["location"] == "/login"
    form = client.get("/login", headers=forged)
    assert 'action="/login"' in form.text and "evil" not in form.text
