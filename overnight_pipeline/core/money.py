"""Money and exchange rates: Decimal throughout, ISO 4217 minor units, USD-quoted FX."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from math import gcd
from typing import Annotated, Any

from iso4217 import Currency
from pydantic import BeforeValidator, PlainSerializer

# ISO 4217 from the maintained `iso4217` package (the SIX list), not a hand-typed table.
_CODES: frozenset[str] = frozenset(c.code for c in Currency)
# Codes without a minor unit (XAU, XDR, XTS, XXX) count in hundredths, like most currencies.
_MINOR_UNITS: dict[str, int] = {c.code: c.exponent for c in Currency if c.exponent is not None}

QUOTE_BASE = "USD"


def is_currency(code: str) -> bool:
    """Whether `code` is an ISO 4217 currency code (upper case)."""
    return code in _CODES


def minor_unit(currency: str) -> int:
    """Digits after the decimal point for `currency` (ISO 4217; 2 for an unknown code)."""
    return _MINOR_UNITS.get(currency.upper(), 2)


def quantum(currency: str) -> Decimal:
    """The smallest amount of `currency`: Decimal('0.01'), or Decimal('1') for JPY."""
    return Decimal(1).scaleb(-minor_unit(currency))


def parse_decimal(value: Any, *, field_name: str = "value") -> Decimal:
    """A finite Decimal from a string or int; floats are refused because they lose cents."""
    if isinstance(value, Decimal):
        result = value
    elif isinstance(value, bool) or isinstance(value, float):
        raise ValueError(
            f"{field_name} must be a decimal string such as '3.10', not {value!r} "
            "(binary floats cannot hold cents exactly)"
        )
    elif isinstance(value, int):
        result = Decimal(value)
    elif isinstance(value, str):
        try:
            result = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError(f"{field_name} must be a decimal string, got {value!r}") from None
    else:
        raise ValueError(f"{field_name} must be a decimal string, got {value!r}")
    if not result.is_finite():
        raise ValueError(f"{field_name} must be a finite number, got {value!r}")
    return result


def _validate_decimal(value: Any) -> Decimal:
    return parse_decimal(value)


# A Decimal that arrives and leaves as a JSON string (BEHAVIOUR §1, §5: strings at the edges).
DecimalString = Annotated[
    Decimal,
    BeforeValidator(_validate_decimal),
    PlainSerializer(lambda d: format(d, "f"), return_type=str, when_used="json"),
]


class MissingRateError(LookupError):
    """No rate for a currency pair in the run's snapshot; never silently 1.0."""

    def __init__(self, source: str, target: str) -> None:
        self.source, self.target = source, target
        super().__init__(f"no exchange rate for {source}->{target} in the snapshot")


@dataclass(frozen=True)
class FxRates:
    """A snapshot of USD-quoted rates: `usd_to["BRL"] = 5.0123` means 1 USD = 5.0123 BRL."""

    usd_to: Mapping[str, Decimal]
    as_of: datetime | None = None
    stale: bool = False
    _cache: dict[tuple[str, str], Decimal] = field(default_factory=dict, compare=False)
    _ratios: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict, compare=False)

    def rate(self, source: str, target: str) -> Decimal:
        """Units of `target` for one `source`: (USD→target)/(USD→source), in Decimal."""
        if source == target:
            return Decimal(1)
        key = (source, target)
        cached = self._cache.get(key)
        if cached is not None:
            return cached
        to_source, to_target = self._quotes(source, target)
        result = to_target / to_source
        self._cache[key] = result
        return result

    def ratio(self, source: str, target: str) -> tuple[int, int]:
        """The exact rate (USD→target)/(USD→source) as (numerator, denominator), in lowest
        terms; what the allocation computes with (BEHAVIOUR §3.6)."""
        if source == target:
            return 1, 1
        key = (source, target)
        cached = self._ratios.get(key)
        if cached is not None:
            return cached
        to_source, to_target = self._quotes(source, target)
        t_num, t_den = to_target.as_integer_ratio()
        s_num, s_den = to_source.as_integer_ratio()
        num, den = t_num * s_den, t_den * s_num
        common = gcd(num, den)
        result = (num // common, den // common)
        self._ratios[key] = result
        return result

    def _quotes(self, source: str, target: str) -> tuple[Decimal, Decimal]:
        """USD→source and USD→target, or `MissingRateError`."""
        to_source = Decimal(1) if source == QUOTE_BASE else self.usd_to.get(source)
        to_target = Decimal(1) if target == QUOTE_BASE else self.usd_to.get(target)
        if to_source is None or to_target is None or to_source <= 0 or to_target <= 0:
            raise MissingRateError(source, target)
        return to_source, to_target

    def convert(self, amount: Decimal, source: str, target: str) -> Decimal:
        """`amount` of `source` expressed in `target` (unrounded)."""
        return amount * self.rate(source, target)

    def to_payload(self) -> dict[str, str]:
        return {cur: format(rate, "f") for cur, rate in sorted(self.usd_to.items())}
