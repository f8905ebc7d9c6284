"""Field parsers shared by the files and HTTP providers: each raises ValueError with the value."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from overnight_pipeline.core.money import parse_decimal

_CURRENCY = re.compile(r"^[A-Z]{3}$")


def currency(value: Any) -> str:
    """An ISO 4217 code: three upper-case letters."""
    if not isinstance(value, str) or not _CURRENCY.match(value.strip()):
        raise ValueError(f"must be an ISO 4217 code such as 'USD', got {value!r}")
    return value.strip()


def positive_decimal(value: Any, *, strings_only: bool = False) -> Decimal:
    """A finite Decimal > 0. `strings_only` refuses JSON numbers (our contract's rule)."""
    result = decimal_value(value, strings_only=strings_only)
    if result <= 0:
        raise ValueError(f"must be greater than 0, got {value!r}")
    return result


def decimal_value(value: Any, *, strings_only: bool = False) -> Decimal:
    if strings_only and not isinstance(value, str):
        if isinstance(value, int | float | Decimal) and not isinstance(value, bool):
            shown = f"the JSON number {value}"
        else:
            shown = repr(value)
        raise ValueError(f'must be a decimal string such as "61.20", got {shown}')
    if isinstance(value, str) and not value.strip():
        raise ValueError("must be a decimal string, got an empty string")
    try:
        return parse_decimal(value, field_name="value")
    except ValueError as exc:
        raise ValueError(str(exc).removeprefix("value ")) from None


def optional_decimal(value: Any, *, strings_only: bool = False) -> Decimal | None:
    if value is None or (isinstance(value, str) and not value.strip() and not strings_only):
        return None
    return decimal_value(value, strings_only=strings_only)


def timestamp(value: Any) -> datetime:
    """An ISO 8601 date or date-time; a naive one is taken as UTC. Returned in UTC."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be an ISO 8601 date or date-time, got {value!r}")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"must be an ISO 8601 date or date-time, got {value!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def iso_date(value: Any) -> date:
    if not isinstance(value, str):
        raise ValueError(f"must be a YYYY-MM-DD date, got {value!r}")
    try:
        return date.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"must be a YYYY-MM-DD date, got {value!r}") from None


def text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"must be a non-empty string, got {value!r}")
    return value.strip()
