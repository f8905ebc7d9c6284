"""The market-data interface the pipeline codes against (BEHAVIOUR §7, §10).

A provider answers three questions for one date: USD-quoted exchange rates, a price per
`(market, symbol)` and the fundamentals per `(market, symbol)`. Every result says where it
came from (`source`), when it was fetched (`as_of`) and whether any of it is `stale` (read
back from the database because the live providers could not answer). Methods are
synchronous: Dagster assets call them; HTTP providers run asyncio inside.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol, TypeVar, runtime_checkable

from overnight_pipeline.core.chunks import chunks
from overnight_pipeline.core.money import QUOTE_BASE, FxRates
from overnight_pipeline.core.vocabulary import METRICS

Instrument = tuple[str, str]  # (market, symbol)

_UNSET = object()


def utcnow() -> datetime:
    return datetime.now(UTC)


class ProviderError(Exception):
    """A provider could not answer; names the provider and, for bad data, the field and value."""

    def __init__(
        self, provider: str, message: str, *, field: str | None = None, value: object = _UNSET
    ) -> None:
        self.provider = provider
        self.field = field
        self.value = None if value is _UNSET else value
        text = f"{provider}: "
        if field is not None:
            text += f"{field}: "
        text += message
        if value is not _UNSET:
            text += f" (got {value!r})"
        super().__init__(text)


@dataclass(frozen=True)
class Health:
    ok: bool
    detail: str


@dataclass(frozen=True)
class RatesResult:
    """`usd_to["BRL"] = 5.0123` means 1 USD = 5.0123 BRL. USD itself is never listed."""

    usd_to: dict[str, Decimal]
    source: str
    as_of: datetime  # fetched at (UTC)
    stale: bool = False
    age: timedelta | None = None  # of the oldest stale rate: requested day − its date
    rate_date: date | None = None  # the date the rates are quoted for (newest, if mixed)
    missing: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stale_currencies: frozenset[str] = frozenset()
    sources: dict[str, str] = field(default_factory=dict)  # per currency, when not `source`

    def fx(self) -> FxRates:
        """The core snapshot used for conversions; the stale flag is passed through."""
        return FxRates(usd_to=dict(self.usd_to), as_of=self.as_of, stale=self.stale)

    def source_of(self, currency: str) -> str:
        return self.sources.get(currency, self.source)


@dataclass(frozen=True)
class Quote:
    price: Decimal
    currency: str
    as_of: datetime  # when the price was valid, as the source said (else when fetched)


@dataclass(frozen=True)
class PricesResult:
    """Every requested distinct instrument is in `quotes` or in `missing`, never both."""

    quotes: dict[Instrument, Quote]
    missing: list[Instrument]
    errors: list[str]
    source: str
    stale: bool = False
    as_of: datetime = field(default_factory=utcnow)
    stale_instruments: frozenset[Instrument] = frozenset()
    ages: dict[Instrument, timedelta] = field(default_factory=dict)  # of stale instruments
    sources: dict[Instrument, str] = field(default_factory=dict)  # when not `source`

    def source_of(self, instrument: Instrument) -> str:
        return self.sources.get(instrument, self.source)

    @classmethod
    def of(
        cls,
        wanted: Sequence[Instrument],
        found: Mapping[Instrument, Quote],
        *,
        errors: list[str],
        source: str,
        **more: Any,
    ) -> PricesResult:
        """The answer to `wanted`: each instrument in `quotes` (in `wanted`'s order) or in
        `missing`."""
        quotes, missing = _answer(wanted, found)
        return cls(quotes=quotes, missing=missing, errors=errors, source=source, **more)


@dataclass(frozen=True)
class FundamentalsResult:
    """`values[instrument]` has every metric of METRICS as a key; a null is `None`."""

    values: dict[Instrument, dict[str, Decimal | None]]
    missing: list[Instrument]
    errors: list[str]
    source: str
    stale: bool = False
    as_of: datetime = field(default_factory=utcnow)
    stale_instruments: frozenset[Instrument] = frozenset()
    ages: dict[Instrument, timedelta] = field(default_factory=dict)
    sources: dict[Instrument, str] = field(default_factory=dict)

    def source_of(self, instrument: Instrument) -> str:
        return self.sources.get(instrument, self.source)

    @classmethod
    def of(
        cls,
        wanted: Sequence[Instrument],
        found: Mapping[Instrument, dict[str, Decimal | None]],
        *,
        errors: list[str],
        source: str,
        **more: Any,
    ) -> FundamentalsResult:
        """The answer to `wanted`: each instrument in `values` (in `wanted`'s order) or in
        `missing`."""
        values, missing = _answer(wanted, found)
        return cls(values=values, missing=missing, errors=errors, source=source, **more)


V = TypeVar("V")


def _answer(
    wanted: Sequence[Instrument], found: Mapping[Instrument, V]
) -> tuple[dict[Instrument, V], list[Instrument]]:
    return {i: found[i] for i in wanted if i in found}, [i for i in wanted if i not in found]


@runtime_checkable
class MarketDataProvider(Protocol):
    """Where market data comes from; the pipeline never knows which one it has."""

    name: str

    def fetch_rates(self, currencies: Collection[str], *, day: date) -> RatesResult: ...

    def fetch_prices(self, instruments: Sequence[Instrument], *, day: date) -> PricesResult: ...

    def fetch_fundamentals(
        self, instruments: Sequence[Instrument], *, day: date
    ) -> FundamentalsResult: ...

    def health(self) -> Health: ...


def distinct(instruments: Iterable[Instrument]) -> list[Instrument]:
    """Each instrument once, in first-seen order (a holding shared by many users is one fetch)."""
    return list(dict.fromkeys(map(tuple, instruments)))  # type: ignore[arg-type]


def wanted_currencies(currencies: Iterable[str]) -> list[str]:
    """The distinct, upper-cased, sorted currencies to ask for; USD is implicit (1)."""
    return sorted({c.strip().upper() for c in currencies} - {QUOTE_BASE})


def batches(items: Sequence[Instrument], size: int) -> list[Sequence[Instrument]]:
    if size <= 0:
        raise ValueError(f"batch_size must be positive, got {size}")
    return list(chunks(items, size))


def empty_metrics() -> dict[str, Decimal | None]:
    return dict.fromkeys(METRICS)


def label(instrument: Instrument) -> str:
    return f"{instrument[0]}:{instrument[1]}"
