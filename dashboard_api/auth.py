"""Dashboard tokens: HS256 JWTs whose `sub` is the user id (BEHAVIOUR §6).

The user id comes only from a verified token. `sub` and `exp` are required, the only
accepted algorithm is HS256 (so `alg: none` and every other algorithm fail), and a small
leeway absorbs clock skew between the issuer and this server.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from cachetools import TLRUCache

ALGORITHM = "HS256"
LEEWAY_SECONDS = 30
DEFAULT_TTL = timedelta(hours=24)
COOKIE_NAME = "overnight_token"


@dataclass(frozen=True)
class Principal:
    user_id: uuid.UUID
    admin: bool
    user_key: str  # str(user_id): the form the cache documents carry as `userId`
    expires_at: datetime


class AuthError(Exception):
    """A request without a usable token; always answered 401, never 500."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def issue_token(
    secret: str,
    user_id: uuid.UUID,
    *,
    admin: bool = False,
    ttl: timedelta = DEFAULT_TTL,
    now: datetime | None = None,
) -> str:
    """A signed token for `user_id`, valid for `ttl`; `admin` adds the job-runs claim."""
    if ttl.total_seconds() <= 0:
        raise ValueError(f"ttl must be positive, got {ttl}")
    now = now or datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": str(user_id),
        "iat": int(now.timestamp()),
        "exp": int((now + ttl).timestamp()),
    }
    if admin:
        claims["admin"] = True
    return jwt.encode(claims, secret, algorithm=ALGORITHM)


def decode_token(token: str, secret: str) -> Principal:
    """The principal of a valid token; `AuthError` naming the problem otherwise."""
    try:
        claims = jwt.decode(
            token,
            secret,
            algorithms=[ALGORITHM],
            options={"require": ["sub", "exp"]},
            leeway=LEEWAY_SECONDS,
        )
    except jwt.ExpiredSignatureError:
        raise AuthError("the token has expired") from None
    except jwt.MissingRequiredClaimError as exc:
        raise AuthError(f"the token has no '{exc.claim}' claim") from None
    except jwt.InvalidAlgorithmError:
        raise AuthError(f"the token is not signed with {ALGORITHM}") from None
    except jwt.InvalidSignatureError:
        raise AuthError("the token's signature does not verify") from None
    except jwt.InvalidTokenError:
        raise AuthError("the token is malformed") from None
    sub = claims["sub"]
    try:
        user_id = uuid.UUID(sub)
    except (TypeError, ValueError, AttributeError):
        raise AuthError(f"the token's subject is not a user id (got {sub!r})") from None
    try:
        expires_at = datetime.fromtimestamp(claims["exp"], UTC)
    except (OverflowError, ValueError, OSError, TypeError):
        raise AuthError(f"the token's expiry is out of range (got {claims['exp']!r})") from None
    return Principal(
        user_id=user_id,
        admin=claims.get("admin") is True,
        user_key=str(user_id),
        expires_at=expires_at,
    )


class TokenVerifier:
    """`decode_token` with a bounded memo of tokens already verified (cachetools `TLRUCache`).

    PyJWT's decode is a quarter of a cache hit's CPU; a dashboard client sends the same
    token again and again. Only fully verified tokens are remembered (keyed by the whole
    signed string, for this one secret), each until its own expiry (plus the leeway), after
    which it is verified by PyJWT again; the least recently used go first when full.
    """

    def __init__(
        self, secret: str, *, max_entries: int = 10_000, clock: Callable[[], float] = time.time
    ) -> None:
        self.secret = secret
        self.memo: TLRUCache[str, Principal] = TLRUCache(
            maxsize=max_entries, ttu=_deadline, timer=clock
        )

    def verify(self, token: str) -> Principal:
        principal = self.memo.get(token)
        if principal is None:
            principal = decode_token(token, self.secret)
            self.memo[token] = principal
        return principal


def _deadline(token: str, principal: Principal, now: float) -> float:
    return principal.expires_at.timestamp() + LEEWAY_SECONDS


def bearer_token(authorization: list[str]) -> str:
    """The token of exactly one `Authorization: Bearer <token>` header."""
    if not authorization:
        raise AuthError("missing 'Authorization: Bearer <token>' header")
    if len(authorization) > 1:
        raise AuthError("more than one Authorization header")
    scheme, _, token = authorization[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        raise AuthError("the Authorization header must read 'Bearer <token>'")
    return token
