"""The last link of the fallback chain: the newest values already in the database.

Everything it returns is `stale`, with its age: the requested day minus the date the value
was stored for (0 days when today's value was stored by an earlier run).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from datetime import date, timedelta
from typing import TypeVar

from sqlalchemy import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    PricesResult,
    ProviderError,
    Quote,
    RatesResult,
    distinct,
    utcnow,
    wanted_currencies,
)
from overnight_pipeline.storage.db import ping
from overnight_pipeline.storage.market_data import (
    newest_fundamentals,
    newest_prices,
    newest_rates,
)

T = TypeVar("T")


class StoredProvider:
    """Reads through an Engine (a short read-only connection per call) or, in tests and
    inside a caller's transaction, through a given Connection."""

    def __init__(self, bind: Engine | Connection, *, name: str = "stored") -> None:
        self.bind = bind
        self.name = name

    @contextmanager
    def _connection(self) -> Iterator[Connection]:
        if isinstance(self.bind, Connection):
            yield self.bind
            return
        with self.bind.connect() as conn:
            yield conn

    def _read(self, what: str, query: Callable[[Connection], T]) -> T:
        try:
            with self._connection() as conn:
                return query(conn)
        except SQLAlchemyError as exc:
            raise ProviderError(
                self.name, f"cannot read stored {what}: {type(exc).__name__}: {exc.args[0]}"
            ) from exc

    def fetch_rates(self, currencies: Collection[str], *, day: date) -> RatesResult:
        wanted = wanted_currencies(currencies)
        found = self._read("rates", lambda c: newest_rates(c, wanted, on_or_before=day))
        dates = [r.rate_date for r in found.values()]
        return RatesResult(
            usd_to={c: r.rate for c, r in sorted(found.items())},
            source=self.name,
            as_of=utcnow(),
            stale=bool(found),
            age=timedelta(days=(day - min(dates)).days) if dates else None,
            rate_date=max(dates) if dates else None,
            missing=[c for c in wanted if c not in found],
            stale_currencies=frozenset(found),
        )

    def fetch_prices(self, instruments: Sequence[Instrument], *, day: date) -> PricesResult:
        wanted = distinct(instruments)
        found = self._read("prices", lambda c: newest_prices(c, wanted, on_or_before=day))
        quotes = {i: Quote(found[i].price, found[i].currency, found[i].as_of) for i in found}
        return PricesResult(
            quotes=quotes,
            missing=[i for i in wanted if i not in found],
            errors=[],
            source=self.name,
            stale=bool(found),
            stale_instruments=frozenset(found),
            ages={i: timedelta(days=(day - found[i].price_date).days) for i in found},
        )

    def fetch_fundamentals(
        self, instruments: Sequence[Instrument], *, day: date
    ) -> FundamentalsResult:
        wanted = distinct(instruments)
        found = self._read(
            "fundamentals", lambda c: newest_fundamentals(c, wanted, on_or_before=day)
        )
        return FundamentalsResult(
            values={i: dict(found[i].values) for i in found},
            missing=[i for i in wanted if i not in found],
            errors=[],
            source=self.name,
            stale=bool(found),
            stale_instruments=frozenset(found),
            ages={i: timedelta(days=(day - found[i].fundamentals_date).days) for i in found},
        )

    def health(self) -> Health:
        try:
            self._read("anything", ping)
        except ProviderError as exc:
            return Health(False, str(exc))
        return Health(True, "database reachable")
