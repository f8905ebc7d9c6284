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
# Matched whole (`fullmatch`): `$` alone would let a trailing line feed through.
TEXT_SEGMENT = r"^[^\u0000-\u001f\u007f/]{1,%d}$"
MARKET_PATTERN = TEXT_SEGMENT % 16
SYMBOL_PATTERN = TEXT_SEGMENT % 32
_MARKET = re.compile(MARKET_PATTERN)
_SYMBOL = re.compile(SYMBOL_PATTERN)


_INTEGER = re.compile(r"[0-9]{1,6}")


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
    if not _INTEGER.fullmatch(raw) or not lo <= int(raw) <= hi:
        raise invalid_param(name, raw, f"must be an integer from {lo} to {hi}")
    return int(raw)


def choice_param(request: Request, name: str, choices: Collection[str]) -> str | None:
    raw = single(request, name)
    if raw is not None and raw not in choices:
        raise invalid_param(name, raw, f"must be one of {', '.join(sorted(choices))}")
    return raw


def market_value(raw: str | None, name: str = "market") -> str | None:
    if raw is not None and not _MARKET.fullmatch(raw):
        raise invalid_param(name, raw, "must be 1 to 16 printable characters")
    return raw


def symbol_value(raw: str) -> str:
    if not _SYMBOL.fullmatch(raw):
        raise invalid_param("symbol", raw, "must be 1 to 32 printable characters")
    return raw


_FIRST = datetime.min.replace(tzinfo=UTC)
_LAST = datetime.max.replace(tzinfo=UTC)
_MICRO = timedelta(microseconds=1)
_SPAN = (_LAST - _FIRST) // _MICRO
_CYCLE = timedelta(days=146_097) // _MICRO  # 400 Gregorian years
# RFC 3339 (section 5.6) with its allowances: `t`/`z` in either case, a space for `T`, a
# leap second, any number of fraction digits; seconds may be left out, as ISO 8601 allows.
# ASCII digits only. Not `datetime.fromisoformat`: it reads "00:00:00\x00Z" as 00:00:00Z.
_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})[Tt ]([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?"
    r"(?:[Zz]|([+-])([0-9]{2}):([0-9]{2}))"
)


def time_bound_param(request: Request, name: str) -> datetime | None:
    """An exclusive upper bound on stored times (`?before=`), in UTC; None: no bound.

    RFC 3339 (`2026-11-30T03:00:00Z`, any offset; seconds optional). Exact for what the
    database holds (whole microseconds, years 1 to
    9999 in UTC): a fraction past the microsecond rounds up, a leap second is the next
    minute's start, and a time beyond the calendar's ends in UTC (year 1 at `+14:00`, year
    9999 at `-14:00`) bounds as its end does: nothing is earlier than the first instant,
    everything is earlier than a time after the last.
    """
    raw = single(request, name)
    if raw is None:
        return None
    parsed = _local_time(raw)
    if parsed is None:
        raise invalid_param(
            name, raw, "must be an RFC 3339 time with a UTC offset, e.g. 2026-11-30T03:00:00Z"
        )
    local, offset, carry = parsed
    # In whole microseconds from the first instant: no datetime arithmetic can overflow.
    micros = (local - datetime.min) // _MICRO - offset // _MICRO + carry
    if micros < 0:
        return _FIRST
    if micros > _SPAN:
        return None
    return _FIRST + micros * _MICRO


def _local_time(raw: str) -> tuple[datetime, timedelta, int] | None:
    """(local time, UTC offset, microseconds to add) of an RFC 3339 time, or None."""
    found = _RFC3339.fullmatch(raw)
    if found is None:
        return None
    year, month, day, hour, minute, second, fraction, sign, oh, om = found.groups()
    digits = fraction or ""
    leap = second == "60"
    if int(oh or 0) > 23 or int(om or 0) > 59:
        return None
    # Year 0 (RFC 3339 has it, Python not) is year 400 less one 400-year cycle.
    cycles = int(year == "0000")
    try:
        local = datetime(
            int(year) + 400 * cycles,
            int(month),
            int(day),
            int(hour),
            int(minute),
            59 if leap else int(second or 0),
            int(digits[:6].ljust(6, "0")),
        )
    except ValueError:
        return None
    offset = timedelta(hours=int(oh or 0), minutes=int(om or 0))
    # A leap second (23:59:60.x) bounds as the next minute's start: no stored time lies in
    # it. Digits past the microsecond round up, so a stored microsecond is below the bound
    # exactly when it is below the written time.
    carry = 1_000_000 - local.microsecond if leap else int(digits[6:].strip("0") != "")
    carry -= cycles * _CYCLE
    return local, -offset if sign == "-" else offset, carry


def _at_most(bound: int) -> str:
    """A regular expression for the decimal numerals (leading zeros allowed, no more digits
    than `bound` has) whose value is at most `bound`."""
    digits = str(bound)
    width = len(digits)
    options = [f"[0-9]{{1,{width - 1}}}"] if width > 1 else []
    for i, digit in enumerate(digits):
        if digit != "0":
            rest = width - i - 1
            options.append(
                digits[:i] + f"[0-{int(digit) - 1}]" + (f"[0-9]{{{rest}}}" if rest else "")
            )
    options.append(digits)
    return "(?:" + "|".join(options) + ")"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FIRST_MICROS = (_FIRST - _EPOCH) // _MICRO
_LAST_MICROS = (_LAST - _EPOCH) // _MICRO
# `<microseconds since the epoch>.<correlation id>`, for any time from year 1 to 9999 (what
# the database can give back). The pattern admits exactly that range of numbers, so every
# string matching the documented pattern is a position and every issued cursor matches it.
CURSOR_PATTERN = (
    rf"^(?:-{_at_most(-_FIRST_MICROS)}|{_at_most(_LAST_MICROS)})"
    r"\.[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"
)
_CURSOR = re.compile(CURSOR_PATTERN)


def encode_cursor(cursor: CalculationCursor) -> str:
    micros = (cursor.calculated_at - _EPOCH) // _MICRO
    return f"{micros}.{cursor.correlation_id}"


def decode_cursor(raw: str | None, user_id: uuid.UUID) -> CalculationCursor | None:
    """The caller's own position: the user id never comes from the cursor."""
    if raw is None:
        return None
    if not _CURSOR.fullmatch(raw):
        raise invalid_param("cursor", raw, "is not a cursor from a previous page")
    micros, correlation = raw.split(".")
    calculated_at = _EPOCH + int(micros) * _MICRO
    return CalculationCursor(calculated_at, uuid.UUID(correlation), user_id)
