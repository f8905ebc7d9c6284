"""Hostile HTTP inputs on the page routes and the sign-in form, against a live uvicorn
(uvloop + httptools, as `overnight serve` runs it): oversized, malformed and repeated
parameters, huge cookies and headers. Nothing may answer 5xx; an oversized request gets a
4xx problem."""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dashboard_api.app import MAX_BODY_BYTES, MAX_HEADER_BYTES, MAX_URL_BYTES
from dashboard_api.auth import COOKIE_NAME
from dashboard_api.views import MAX_FORM_BYTES
from overnight_pipeline.settings import Settings
from overnight_pipeline_tests.api.conftest import FAST, token_for
from overnight_pipeline_tests.api.live import live_server

ROUTES = [
    ("GET", "/"),
    ("GET", "/login"),
    ("POST", "/login"),
    ("POST", "/logout"),
    ("GET", "/api/dashboard"),
    ("GET", "/readyz"),
]
PRINTABLE = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=60)
SIZES = st.sampled_from([0, 1, 100, 4_000, 20_000, 100_000])


@pytest.fixture(scope="module")
def base_url(pg_url: str) -> Iterator[str]:
    from overnight_pipeline.settings import load_settings

    app_settings: Settings = load_settings(
        database_url=pg_url,
        redis_url="redis://127.0.0.1:6379/0",
        cache_prefix=f"test:http:{uuid.uuid4().hex[:12]}:",
        dashboard_secret="test-secret-for-the-dashboard-" + "0123456789abcdef" * 3,
    )
    with live_server(app_settings, FAST, production=True) as url:
        yield url


@pytest.fixture(scope="module")
def http(base_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=base_url, timeout=10, follow_redirects=False) as client:
        yield client


@st.composite
def hostile_requests(draw: st.DrawFn) -> dict[str, Any]:
    method, path = draw(st.sampled_from(ROUTES))
    params = draw(
        st.lists(
            st.tuples(st.sampled_from(["token", "limit", "next", "x", ""]), PRINTABLE), max_size=4
        )
    )
    if draw(st.booleans()):
        # httpx itself refuses URLs past 64 KB; past 8 KB is already the server's 414.
        params.append(("q", "v" * draw(st.sampled_from([0, 100, 4_000, 9_000]))))
    headers: dict[str, str] = {}
    cookie = draw(st.sampled_from(["", "garbage", "a.b.c", token_for(uuid.uuid4()), "x" * 30_000]))
    if cookie:
        headers["cookie"] = f"{COOKIE_NAME}={cookie}; {COOKIE_NAME}=second"
    if draw(st.booleans()):
        headers["origin"] = draw(
            st.sampled_from(
                ["http://[::1", "null", "http://evil.example", "", "http://127.0.0.1", "::::"]
            )
        )
    if draw(st.booleans()):
        headers["x-filler"] = "h" * draw(SIZES)
    if draw(st.booleans()):
        headers["authorization"] = draw(
            st.sampled_from(["Bearer", "Bearer " + "a" * 9_000, "Basic Zm9vOmJhcg==", "Bearer a b"])
        )
    body = b""
    if method == "POST":
        body = draw(
            st.one_of(
                st.binary(max_size=300),
                st.just(b"token=a&token=b"),
                st.just(b"token=" + b"t" * (MAX_FORM_BYTES + 1)),
                st.just(b"token=" + b"t" * (MAX_BODY_BYTES + 1)),
                st.just(b"&".join(b"f%d=1" % i for i in range(50))),
                st.just(b"token=%ff%fe"),
            )
        )
        headers["content-type"] = draw(
            st.sampled_from(
                [
                    "application/x-www-form-urlencoded",
                    "application/json",
                    "multipart/form-data",
                    "text/plain; charset=utf-16",
                ]
            )
        )
    return {"method": method, "url": path, "params": params, "headers": headers, "content": body}


@settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=hostile_requests())
def test_no_hostile_request_gets_a_5xx(http: httpx.Client, request: dict[str, Any]) -> None:
    response = http.request(**request)
    assert response.status_code < 500, (request["method"], request["url"], response.text[:200])
    if response.status_code in (413, 414, 431):
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == response.status_code


def raw(base_url: str, request: bytes) -> bytes:
    host, port = base_url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65_536):
            chunks.append(chunk)
            if b"\r\n\r\n" in b"".join(chunks) and len(b"".join(chunks)) > 100:
                break
    return b"".join(chunks)


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"X-Big: " + b"a" * (MAX_HEADER_BYTES + 1) + b"\r\n", 431),
        (b"Cookie: " + COOKIE_NAME.encode() + b"=" + b"c" * 1_000_000 + b"\r\n", 431),
        (b"".join(b"X-%d: v\r\n" % i for i in range(5_000)), 431),
    ],
)
def test_huge_headers_and_cookies_get_a_431_problem(
    base_url: str, extra: bytes, status: int
) -> None:
    for path in (b"/", b"/api/dashboard", b"/login"):
        reply = raw(base_url, b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n")
        assert reply.startswith(b"HTTP/1.1 %d " % status), reply[:100]
        assert b"application/problem+json" in reply


def test_a_huge_url_gets_a_414_problem(http: httpx.Client) -> None:
    for path in ("/", "/api/dashboard", "/login"):
        response = http.get(path, params={"q": "x" * MAX_URL_BYTES})
        assert response.status_code == 414
        assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"token=" + b"t" * (MAX_FORM_BYTES + 1), 413),
        (b"token=" + b"t" * (MAX_BODY_BYTES + 1), 413),
        (b"token=" + b"t" * 5_000_000, 413),
    ],
)
def test_an_oversized_sign_in_form_gets_a_413_problem(
    http: httpx.Client, body: bytes, status: int
) -> None:
    response = http.post(
        "/login", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"token=a&token=b", "one token"),
        (b"token=%ff%fe", "That token does not work"),
        (b"token=\xff\xfe", "UTF-8"),
        (b"&".join(b"f%d=1" % i for i in range(500)), "Paste the token"),
    ],
)
def test_a_malformed_sign_in_form_is_answered_on_the_form(
    http: httpx.Client, body: bytes, words: str
) -> None:
    response = http.post(
        "/login", content=body, headers={"content-type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code in (400, 401)
    assert response.headers["content-type"].startswith("text/html")
    assert words in response.text


def test_an_unparseable_origin_is_a_403_not_a_500(http: httpx.Client) -> None:
    for path in ("/login", "/logout"):
        response = http.post(
            path,
            content=b"token=x",
            headers={"origin": "http://[::1", "content-type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 403
        assert response.headers["content-type"] == "application/problem+json"
