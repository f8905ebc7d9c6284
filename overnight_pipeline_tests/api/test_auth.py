"""Tokens: every bad one is a 401 problem; a user only ever sees their own data."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import pytest
from starlette.testclient import TestClient

from dashboard_api import auth as auth_module
from dashboard_api.auth import (
    COOKIE_NAME,
    LEEWAY_SECONDS,
    AuthError,
    TokenVerifier,
    decode_token,
    issue_token,
)
from overnight_pipeline_tests.api.conftest import SECRET, bearer, token_for
from overnight_pipeline_tests.support.stored_results import Planner

NOW = datetime.now(UTC)


def _b64(part: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")


def _signed(claims: dict[str, Any], *, secret: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, secret, algorithm=algorithm)


USER = str(uuid.uuid4())
LATER = int((NOW + timedelta(hours=1)).timestamp())
BAD_AUTHORIZATION: dict[str, dict[str, str] | list[tuple[str, str]]] = {
    "missing": {},
    "empty header": {"Authorization": ""},
    "basic scheme": {"Authorization": "Basic dXNlcjpwYXNz"},
    "bearer without token": {"Authorization": "Bearer"},
    "bearer with two tokens": {"Authorization": "Bearer a.b.c d.e.f"},
    "not a jwt": {"Authorization": "Bearer not-a-jwt"},
    "garbage segments": {"Authorization": "Bearer aaa.bbb.ccc"},
    "wrong signature": bearer(_signed({"sub": USER, "exp": LATER}, secret="x" * 64)),
    "tampered payload": bearer(
        ".".join(
            [
                _signed({"sub": USER, "exp": LATER}).split(".")[0],
                _b64({"sub": str(uuid.uuid4()), "exp": LATER}),
                _signed({"sub": USER, "exp": LATER}).split(".")[2],
            ]
        )
    ),
    "expired": bearer(_signed({"sub": USER, "exp": int((NOW - timedelta(minutes=5)).timestamp())})),
    "alg none": bearer(
        _b64({"alg": "none", "typ": "JWT"}) + "." + _b64({"sub": USER, "exp": LATER}) + "."
    ),
    "alg none signed": bearer(jwt.encode({"sub": USER, "exp": LATER}, None, algorithm="none")),
    "other hmac algorithm": bearer(_signed({"sub": USER, "exp": LATER}, algorithm="HS512")),
    "missing sub": bearer(_signed({"exp": LATER})),
    "missing exp": bearer(_signed({"sub": USER})),
    "sub not a user id": bearer(_signed({"sub": "admin", "exp": LATER})),
    "sub not a string": bearer(_signed({"sub": 42, "exp": LATER})),
    "exp not a number": bearer(_signed({"sub": USER, "exp": "tomorrow"})),
    "exp out of range": bearer(_signed({"sub": USER, "exp": 10**20})),
    "two authorization headers": [
        ("Authorization", f"Bearer {token_for(uuid.UUID(USER))}"),
        ("Authorization", f"Bearer {token_for(uuid.UUID(USER))}"),
    ],
}


@pytest.mark.parametrize("case", sorted(BAD_AUTHORIZATION))
@pytest.mark.parametrize(
    "path", ["/api/dashboard", "/api/jobs", "/api/audit/assets/NYSE/KO/calculations"]
)
def test_every_bad_token_is_a_401_problem(client: TestClient, case: str, path: str) -> None:
    headers = BAD_AUTHORIZATION[case]
    response = client.get(path, headers=headers)  # type: ignore[arg-type]
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["www-authenticate"] == 'Bearer error="invalid_token"'
    body = response.json()
    assert set(body) == {"type", "title", "status", "detail"} and body["status"] == 401
    assert "Traceback" not in response.text


def test_leeway_accepts_a_token_expired_seconds_ago() -> None:
    user = uuid.uuid4()
    now = datetime.now(UTC)  # not the module's NOW: the suite may reach this test minutes later
    token = issue_token(SECRET, user, ttl=timedelta(seconds=10), now=now - timedelta(seconds=15))
    assert decode_token(token, SECRET).user_id == user
    stale = issue_token(SECRET, user, ttl=timedelta(seconds=10), now=now - timedelta(minutes=2))
    with pytest.raises(AuthError, match="expired"):
        decode_token(stale, SECRET)


def test_issued_tokens_carry_sub_exp_and_admin_only_when_asked() -> None:
    user = uuid.uuid4()
    claims = jwt.decode(issue_token(SECRET, user), SECRET, algorithms=["HS256"])
    assert claims["sub"] == str(user) and claims["exp"] - claims["iat"] == 86_400
    assert "admin" not in claims
    assert decode_token(issue_token(SECRET, user, admin=True), SECRET).admin is True
    # Only the boolean true counts: a string "true" is not an admin claim.
    assert (
        decode_token(_signed({"sub": str(user), "exp": LATER, "admin": "true"}), SECRET).admin
        is False
    )
    with pytest.raises(ValueError, match="ttl must be positive"):
        issue_token(SECRET, user, ttl=timedelta(0))


SMUGGLING = [
    "/api/dashboard?userId={b}",
    "/api/dashboard?user_id={b}&userId={b}&sub={b}",
    "/api/dashboard?userId={b}&userId={a}",
    "/api/dashboard/?userId={b}",
    "/api/dashboard;userId={b}",
    "/api/dashboard%3FuserId={b}",
    "/api/dashboard#{b}",
    "//api/dashboard?userId={b}",
    "/api/./dashboard?userId={b}",
    "/api/dashboard/{b}",
    "/api/dashboard/../dashboard?userId={b}",
    "/api/audit/assets/NYSE/KO/calculations?user_id={b}&userId={b}",
]


def test_a_token_for_a_never_yields_b(
    client: TestClient, new_user: Callable[..., Planner], cache: Callable[..., None]
) -> None:
    a, b = new_user(seed=1), new_user(seed=2)
    cache(b)  # B's entry is hot in Redis; A's comes from PostgreSQL
    b_token = token_for(b.user_id)
    a_headers = {
        **bearer(token_for(a.user_id)),
        "X-User-Id": str(b.user_id),
        "X-Forwarded-User": str(b.user_id),
        "Cookie": f"{COOKIE_NAME}={b_token}",
    }
    # What would show that B's data leaked (a 404 may echo the id the caller typed).
    b_data = [
        b.recs_json.decode().split('"generatedAt":"')[1][:26],
        *(r.symbol for r in b.recs.recommendations),
    ]
    answered = 0
    for template in SMUGGLING:
        url = template.format(a=a.user_id, b=b.user_id)
        response = client.get(url, headers=a_headers)
        assert not [m for m in b_data if m in response.text], url
        assert response.status_code in (200, 404), (url, response.status_code)
        if response.status_code == 200 and url.startswith("/api/dashboard"):
            answered += 1
            data = response.json()["data"]
            assert data["dataFreshness"] == a.recs.generated_at.isoformat().replace("+00:00", "Z")
            assert [r["symbol"] for r in data["recommendations"]] == [
                r.symbol for r in a.recs.recommendations
            ]
    assert answered >= 5
    # A token whose extra claims name B is still A's token.
    sneaky = _signed(
        {"sub": str(a.user_id), "exp": LATER, "userId": str(b.user_id), "user_id": str(b.user_id)}
    )
    response = client.get("/api/dashboard", headers=bearer(sneaky))
    assert response.status_code == 200 and str(b.user_id) not in response.text
    # The API ignores the page's cookie: B's cookie alone gets nothing.
    response = client.get("/api/dashboard", headers={"Cookie": f"{COOKIE_NAME}={b_token}"})
    assert response.status_code == 401


def test_admin_route_refuses_a_user_token(client: TestClient) -> None:
    response = client.get("/api/jobs", headers=bearer(token_for(uuid.uuid4())))
    assert response.status_code == 403
    assert response.headers["content-type"] == "application/problem+json"
    assert "admin" in response.json()["detail"]
    smuggled = client.get("/api/jobs?admin=true", headers=bearer(token_for(uuid.uuid4())))
    assert smuggled.status_code == 403
    ok = client.get("/api/jobs", headers=bearer(token_for(uuid.uuid4(), admin=True)))
    assert ok.status_code == 200 and isinstance(ok.json()["data"], list)


def test_remembered_tokens_still_expire_and_forged_ones_are_never_remembered(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [time.time()]
    verifier = TokenVerifier(SECRET, max_entries=3, clock=lambda: now[0])
    decoded: list[str] = []
    real_decode = auth_module.decode_token

    def counting(token: str, secret: str) -> auth_module.Principal:
        decoded.append(token)
        return real_decode(token, secret)

    monkeypatch.setattr(auth_module, "decode_token", counting)
    user = uuid.uuid4()
    token = issue_token(SECRET, user, ttl=timedelta(seconds=60))
    assert verifier.verify(token).user_id == user
    assert verifier.verify(token).user_id == user  # from the memo
    assert decoded == [token]
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with pytest.raises(AuthError, match="signature"):
        verifier.verify(forged)
    assert forged not in verifier.memo
    for _ in range(5):
        verifier.verify(issue_token(SECRET, uuid.uuid4()))
    assert len(verifier.memo) == 3
    verifier.verify(token)
    decoded.clear()
    now[0] += 60 + LEEWAY_SECONDS + 1  # past the token's expiry: the memo forgets it
    assert token not in verifier.memo
    verifier.verify(token)  # so PyJWT (on the real clock) verifies it again
    assert decoded == [token]
