"""Query and path parameters: each bad value is a 400 naming the parameter and the value."""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta

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
    """The parameter's one value; an empty value (`?cursor=`) counts as absent."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise invalid_param(name, values, "give this parameter at most once")
    return values[0] or None if values else None


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


# `<microseconds since the epoch>.<correlation id>`: every string matching the documented
# pattern is a position (16 digits stay inside datetime's range), so the schema is exact.
CURSOR_PATTERN = r"^[0-9]{1,16}\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def encode_cursor(cursor: CalculationCursor) -> str:
    micros = (cursor.calculated_at - _EPOCH) // timedelta(microseconds=1)
    return f"{micros}.{cursor.correlation_id}"


def decode_cursor(raw: str | None, user_id: uuid.UUID) -> CalculationCursor | None:
    """The caller's own position: the user id never comes from the cursor."""
    if raw is None:
        return None
    if not _CURSOR.match(raw):
        raise invalid_param("cursor", raw, "is not a cursor from a previous page")
    micros, correlation = raw.split(".")
    calculated_at = _EPOCH + timedelta(microseconds=int(micros))
    return CalculationCursor(calculated_at, uuid.UUID(correlation), user_id)
