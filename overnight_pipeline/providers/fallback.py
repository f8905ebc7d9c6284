"""primary → optional secondary → newest stored values (BEHAVIOUR §7).

Each provider is asked only for what the ones before it could not give: a provider that
raises ProviderError (down, circuit open, unreadable) hands everything on; one that answers
hands on its `missing`. Per item the result says which provider answered (`source_of`) and
whether it is stale; errors of every link are kept, prefixed with the provider's name.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any, Generic, TypeVar

from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    MarketDataProvider,
    PricesResult,
    ProviderError,
    RatesResult,
    distinct,
    utcnow,
    wanted_currencies,
)

K = TypeVar("K")
V = TypeVar("V")


@dataclass
class _Merged(Generic[K, V]):
    """What the chain has gathered so far for one call."""

    found: dict[K, V] = field(default_factory=dict)
    sources: dict[K, str] = field(default_factory=dict)
    stale: set[K] = field(default_factory=set)
    ages: dict[K, timedelta] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    answered: int = 0  # providers that answered at all

    def source(self, fallback: str) -> str:
        used = list(dict.fromkeys(self.sources.values()))
        return used[0] if len(used) == 1 else ("+".join(used) if used else fallback)

    def add(self, key: K, value: V, source: str, stale: bool, age: timedelta | None = None) -> None:
        self.found[key] = value
        self.sources[key] = source
        if stale:
            self.stale.add(key)
            if age is not None:
                self.ages[key] = age


class FallbackProvider:
    """A chain of providers that reads like one."""

    def __init__(self, providers: Sequence[MarketDataProvider], *, name: str | None = None):
        if not providers:
            raise ValueError("a fallback chain needs at least one provider")
        self.providers = list(providers)
        self.name = name or self.providers[0].name

    def _fail_if_nobody_answered(self, merged: _Merged[K, V], what: str) -> None:
        if merged.answered == 0 and merged.errors:
            raise ProviderError(
                self.name, f"no provider could give {what}: " + "; ".join(merged.errors)
            )

    def fetch_rates(self, currencies: Collection[str], *, day: date) -> RatesResult:
        remaining = wanted_currencies(currencies)
        merged: _Merged[str, Decimal] = _Merged()
        rate_dates: list[date] = []
        fetched: datetime | None = None
        for provider in self.providers:
            if not remaining:
                break
            try:
                result = provider.fetch_rates(remaining, day=day)
            except ProviderError as exc:
                merged.errors.append(str(exc))
                continue
            merged.answered += 1
            merged.errors.extend(result.errors)
            fetched = fetched or result.as_of
            took = [c for c in remaining if c in result.usd_to]
            for currency in took:
                stale = result.stale and (
                    not result.stale_currencies or currency in result.stale_currencies
                )
                merged.add(
                    currency,
                    result.usd_to[currency],
                    result.source_of(currency),
                    stale,
                    result.age,
                )
            if took and result.rate_date is not None:
                rate_dates.append(result.rate_date)
            remaining = [c for c in remaining if c not in merged.found]
        self._fail_if_nobody_answered(merged, "exchange rates")
        source = merged.source(self.name)
        return RatesResult(
            usd_to=dict(sorted(merged.found.items())),
            source=source,
            as_of=fetched or utcnow(),
            stale=bool(merged.stale),
            age=max(merged.ages.values()) if merged.ages else None,
            rate_date=max(rate_dates) if rate_dates else None,
            missing=remaining,
            errors=merged.errors,
            stale_currencies=frozenset(merged.stale),
            sources={c: s for c, s in merged.sources.items() if s != source},
        )

    def _chain(
        self,
        instruments: Sequence[Instrument],
        *,
        day: date,
        what: str,
        fetch: Callable[[MarketDataProvider, list[Instrument], date], Any],
        items: Callable[[Any], Mapping[Instrument, V]],
    ) -> tuple[_Merged[Instrument, V], list[Instrument], datetime]:
        """Ask each link for what the links before it could not give; returns what was
        found, what was wanted and when the first answer came."""
        wanted = distinct(instruments)
        merged: _Merged[Instrument, V] = _Merged()
        fetched: datetime | None = None
        remaining = wanted
        for provider in self.providers:
            if not remaining:
                break
            try:
                result = fetch(provider, remaining, day)
            except ProviderError as exc:
                merged.errors.append(str(exc))
                continue
            merged.answered += 1
            merged.errors.extend(result.errors)
            fetched = fetched or result.as_of
            found = items(result)
            for inst in remaining:
                if inst in found:
                    stale = inst in result.stale_instruments or (
                        result.stale and not result.stale_instruments
                    )
                    merged.add(
                        inst, found[inst], result.source_of(inst), stale, result.ages.get(inst)
                    )
            remaining = [i for i in remaining if i not in merged.found]
        self._fail_if_nobody_answered(merged, what)
        return merged, wanted, fetched or utcnow()

    def fetch_prices(self, instruments: Sequence[Instrument], *, day: date) -> PricesResult:
        merged, wanted, fetched = self._chain(
            instruments,
            day=day,
            what="prices",
            fetch=lambda p, todo, d: p.fetch_prices(todo, day=d),
            items=lambda r: r.quotes,
        )
        return PricesResult.of(wanted, merged.found, **self._provenance(merged, fetched))

    def fetch_fundamentals(
        self, instruments: Sequence[Instrument], *, day: date
    ) -> FundamentalsResult:
        merged, wanted, fetched = self._chain(
            instruments,
            day=day,
            what="fundamentals",
            fetch=lambda p, todo, d: p.fetch_fundamentals(todo, day=d),
            items=lambda r: r.values,
        )
        return FundamentalsResult.of(wanted, merged.found, **self._provenance(merged, fetched))

    def _provenance(self, merged: _Merged[Instrument, Any], fetched: datetime) -> dict[str, Any]:
        """Errors, sources, staleness and ages of a merged answer, as result fields."""
        source = merged.source(self.name)
        return {
            "errors": merged.errors,
            "source": source,
            "stale": bool(merged.stale),
            "as_of": fetched,
            "stale_instruments": frozenset(merged.stale),
            "ages": merged.ages,
            "sources": {i: s for i, s in merged.sources.items() if s != source},
        }

    def health(self) -> Health:
        """OK when the primary is; the detail covers every link of the chain."""
        checks = [(p.name, p.health()) for p in self.providers]
        detail = "; ".join(f"{name}: {'ok' if h.ok else 'DOWN'} ({h.detail})" for name, h in checks)
        return Health(checks[0][1].ok, detail)
