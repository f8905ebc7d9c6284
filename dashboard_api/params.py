"""Query and path parameters: each bad value is a 400 naming the parameter and the value."""

from __future__ import annotations

import base64
import binascii
import re
import uuid
from collections.abc import Collection
from datetime import datetime

from starlette.requests import Request

from dashboard_api.problems import invalid_param
from overnight_pipeline.storage.queries import CalculationCursor

# Any printable text without '/' (a path segment): PostgreSQL rejects NUL in text values.
TEXT_SEGMENT = r"^[^\u0000-\u001f\u007f/]{1,%d}$"
MARKET_PATTERN = TEXT_SEGMENT % 16
SYMBOL_PATTERN = TEXT_SEGMENT % 32
_MARKET = re.compile(MARKET_PATTERN)
_SYMBOL = re.compile(SYMBOL_PATTERN)


def single(request: Request, name: str) -> str | None:
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise invalid_param(name, values, "give this parameter at most once")
    return values[0] if values else None


def int_param(request: Request, name: str, *, default: int, lo: int, hi: int) -> int:
    raw = single(request, name)
    if raw is None:
        return default
    if not re.fullmatch(r"[0-9]{1,6}", raw) or not lo <= int(raw) <= hi:
        raise invalid_param(name, raw, f"must be an integer from {lo} to {hi}")
    return int(raw)


def choice_param(request: Request, name: str, choices: Collection[str]) -> str | None:
    raw = single(request, name)
    if raw is not None and raw not in choices:
        raise invalid_param(name, raw, f"must be one of {', '.join(sorted(choices))}")
    return raw


def market_value(raw: str | None, name: str = "market") -> str | None:
    if raw is not None and not _MARKET.match(raw):
        raise invalid_param(name, raw, "must be 1 to 16 printable characters")
    return raw


def symbol_value(raw: str) -> str:
    if not _SYMBOL.match(raw):
        raise invalid_param("symbol", raw, "must be 1 to 32 printable characters")
    return raw


def datetime_param(request: Request, name: str) -> datetime | None:
    raw = single(request, name)
    if raw is None:
        return None
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None:
        raise invalid_param(name, raw, "must be an ISO 8601 time with a UTC offset")
    return value


def encode_cursor(cursor: CalculationCursor) -> str:
    text = f"{cursor.created_at.isoformat()}|{cursor.correlation_id}"
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_cursor(raw: str | None, user_id: uuid.UUID) -> CalculationCursor | None:
    """The caller's own position: the user id never comes from the cursor."""
    if raw is None:
        return None
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        stamp, correlation = text.split("|")
        created_at = datetime.fromisoformat(stamp)
        if created_at.tzinfo is None:
            raise ValueError("naive time")
        return CalculationCursor(created_at, uuid.UUID(correlation), user_id)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid_param("cursor", raw, "is not a cursor from a previous page") from None
