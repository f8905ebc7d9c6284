"""Fetched market data in the database: what the pipeline stores after each fetch, and the
newest stored value per item, which the stale fallback serves when every live provider fails.

Functions take a Connection and never commit (the caller owns the transaction). Results are
typed structurally (the Protocols below) because storage sits under the providers package
and may not import it; `overnight_pipeline.providers.base`'s results satisfy them. Items a
result marks stale came from this database already and are never written back as fresh.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Iterator, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Protocol, TypeVar

from sqlalchemy import Connection, Select, Table, and_, func, select

from overnight_pipeline.core.money import QUOTE_BASE
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.storage.bulk import upsert
from overnight_pipeline.storage.keysets import keys_in
from overnight_pipeline.storage.models import (
    asset_fundamentals_table,
    asset_prices_table,
    assets_table,
    exchange_rates_table,
)

Instrument = tuple[str, str]  # (market, symbol), as in providers.base
# Row-value IN lists stay well under SQLite's and psycopg's parameter limits.
CHUNK = 500
T = TypeVar("T")


class RatesLike(Protocol):
    @property
    def usd_to(self) -> Mapping[str, Decimal]: ...
    @property
    def as_of(self) -> datetime: ...
    @property
    def stale(self) -> bool: ...
    @property
    def stale_currencies(self) -> AbstractSet[str]: ...
    def source_of(self, currency: str) -> str: ...


class QuoteLike(Protocol):
    @property
    def price(self) -> Decimal: ...
    @property
    def currency(self) -> str: ...
    @property
    def as_of(self) -> datetime: ...


class PricesLike(Protocol):
    @property
    def quotes(self) -> Mapping[Instrument, QuoteLike]: ...
    @property
    def stale(self) -> bool: ...
    @property
    def stale_instruments(self) -> AbstractSet[Instrument]: ...
    def source_of(self, instrument: Instrument) -> str: ...


class FundamentalsLike(Protocol):
    @property
    def values(self) -> Mapping[Instrument, Mapping[str, Decimal | None]]: ...
    @property
    def as_of(self) -> datetime: ...
    @property
    def stale(self) -> bool: ...
    @property
    def stale_instruments(self) -> AbstractSet[Instrument]: ...
    def source_of(self, instrument: Instrument) -> str: ...


@dataclass(frozen=True)
class StoredRate:
    rate: Decimal  # 1 USD = rate units
    rate_date: date
    source: str
    as_of: datetime


@dataclass(frozen=True)
class StoredPrice:
    price: Decimal
    currency: str
    price_date: date
    source: str
    as_of: datetime


@dataclass(frozen=True)
class StoredFundamentals:
    values: dict[str, Decimal | None]  # every metric of METRICS
    fundamentals_date: date
    source: str
    as_of: datetime


def _fresh(items: Iterable[T], stale: bool, stale_items: AbstractSet[T]) -> Iterator[T]:
    # A result flagged stale without naming its items is stale throughout.
    if stale and not stale_items:
        return
    yield from (item for item in items if item not in stale_items)


def _ids_for(
    instruments: Iterable[Instrument], asset_ids: Mapping[Instrument, uuid.UUID]
) -> dict[Instrument, uuid.UUID]:
    chosen = list(instruments)
    unknown = [f"{m}:{s}" for m, s in chosen if (m, s) not in asset_ids]
    if unknown:
        shown = ", ".join(unknown[:5]) + (" …" if len(unknown) > 5 else "")
        raise ValueError(f"no asset id for {len(unknown)} instrument(s): {shown}")
    return {inst: asset_ids[inst] for inst in chosen}


def store_rates(conn: Connection, result: RatesLike, *, day: date) -> int:
    """Upsert the fresh USD-quoted rates of `result` under `day`; returns rows written."""
    rows = [
        {
            "rate_date": day,
            "base": QUOTE_BASE,
            "quote": currency,
            "rate": result.usd_to[currency],
            "source": result.source_of(currency)[:64],
            "as_of": result.as_of,
        }
        for currency in _fresh(sorted(result.usd_to), result.stale, result.stale_currencies)
        if currency != QUOTE_BASE
    ]
    upsert(
        conn,
        exchange_rates_table,
        rows,
        key=["rate_date", "base", "quote"],
        update=["rate", "source", "as_of"],
    )
    return len(rows)


def store_prices(
    conn: Connection,
    result: PricesLike,
    *,
    day: date,
    asset_ids: Mapping[Instrument, uuid.UUID],
) -> int:
    """Upsert the fresh quotes of `result` under `day`. Every quoted instrument needs an id
    in `asset_ids` (ValueError naming the ones without)."""
    fresh = list(_fresh(result.quotes, result.stale, result.stale_instruments))
    ids = _ids_for(fresh, asset_ids)
    rows = []
    for inst in fresh:
        quote = result.quotes[inst]
        rows.append(
            {
                "asset_id": ids[inst],
                "price_date": day,
                "price": quote.price,
                "currency": quote.currency,
                "source": result.source_of(inst)[:64],
                "as_of": quote.as_of,
            }
        )
    upsert(
        conn,
        asset_prices_table,
        rows,
        key=["asset_id", "price_date"],
        update=["price", "currency", "source", "as_of"],
    )
    return len(rows)


def store_fundamentals(
    conn: Connection,
    result: FundamentalsLike,
    *,
    day: date,
    asset_ids: Mapping[Instrument, uuid.UUID],
) -> int:
    """Upsert the fresh fundamentals of `result` under `day` (one row per asset; a metric
    absent from a value mapping is stored as null)."""
    fresh = list(_fresh(result.values, result.stale, result.stale_instruments))
    ids = _ids_for(fresh, asset_ids)
    rows: list[dict[str, Any]] = []
    for inst in fresh:
        values = result.values[inst]
        row: dict[str, Any] = {"asset_id": ids[inst], "fundamentals_date": day}
        row.update({metric: values.get(metric) for metric in METRICS})
        row["source"] = result.source_of(inst)[:64]
        row["as_of"] = result.as_of
        rows.append(row)
    upsert(
        conn,
        asset_fundamentals_table,
        rows,
        key=["asset_id", "fundamentals_date"],
        update=[*METRICS, "source", "as_of"],
    )
    return len(rows)


def newest_rates(
    conn: Connection, currencies: Collection[str], *, on_or_before: date
) -> dict[str, StoredRate]:
    """Per currency, the newest stored USD→currency rate dated on or before `on_or_before`."""
    t = exchange_rates_table
    wanted = sorted({c.upper() for c in currencies} - {QUOTE_BASE})
    found: dict[str, StoredRate] = {}
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        newest = (
            select(t.c.quote, func.max(t.c.rate_date).label("newest"))
            .where(t.c.base == QUOTE_BASE, t.c.quote.in_(chunk), t.c.rate_date <= on_or_before)
            .group_by(t.c.quote)
            .subquery()
        )
        query = select(t.c.quote, t.c.rate, t.c.rate_date, t.c.source, t.c.as_of).join(
            newest,
            and_(
                t.c.base == QUOTE_BASE,
                t.c.quote == newest.c.quote,
                t.c.rate_date == newest.c.newest,
            ),
        )
        for quote, rate, rate_date, source, as_of in conn.execute(query):
            found[quote] = StoredRate(rate, rate_date, source, as_of)
    return found


def _instrument_chunks(instruments: Iterable[Instrument]) -> Iterator[list[Instrument]]:
    distinct = list(dict.fromkeys(instruments))
    for start in range(0, len(distinct), CHUNK):
        yield distinct[start : start + CHUNK]


def _newest_rows(
    conn: Connection, table: Table, date_column: str, chunk: list[Instrument], on_or_before: date
) -> Select[Any]:
    """`table`'s newest row per asset of `chunk` dated on or before `on_or_before`, with
    the asset's market and symbol in front. The instruments are one array per column on
    PostgreSQL (`keysets`: the plan is the same for 1 or 500 of them)."""
    a = assets_table
    dated = table.c[date_column]
    (wanted,) = keys_in(conn, [a.c.market, a.c.symbol], chunk, chunk=len(chunk))
    newest = (
        select(table.c.asset_id, func.max(dated).label("newest"))
        .join(a, a.c.id == table.c.asset_id)
        .where(wanted, dated <= on_or_before)
        .group_by(table.c.asset_id)
        .subquery()
    )
    return (
        select(a.c.market, a.c.symbol, table)
        .join(newest, and_(table.c.asset_id == newest.c.asset_id, dated == newest.c.newest))
        .join(a, a.c.id == table.c.asset_id)
    )


def newest_prices(
    conn: Connection, instruments: Iterable[Instrument], *, on_or_before: date
) -> dict[Instrument, StoredPrice]:
    """Per (market, symbol), the newest stored price dated on or before `on_or_before`."""
    found: dict[Instrument, StoredPrice] = {}
    for chunk in _instrument_chunks(instruments):
        query = _newest_rows(conn, asset_prices_table, "price_date", chunk, on_or_before)
        for row in conn.execute(query).mappings():
            found[(row["market"], row["symbol"])] = StoredPrice(
                row["price"], row["currency"], row["price_date"], row["source"], row["as_of"]
            )
    return found


def newest_fundamentals(
    conn: Connection, instruments: Iterable[Instrument], *, on_or_before: date
) -> dict[Instrument, StoredFundamentals]:
    """Per (market, symbol), the newest stored fundamentals row on or before `on_or_before`."""
    found: dict[Instrument, StoredFundamentals] = {}
    for chunk in _instrument_chunks(instruments):
        query = _newest_rows(
            conn, asset_fundamentals_table, "fundamentals_date", chunk, on_or_before
        )
        for row in conn.execute(query).mappings():
            found[(row["market"], row["symbol"])] = StoredFundamentals(
                values={metric: row[metric] for metric in METRICS},
                fundamentals_date=row["fundamentals_date"],
                source=row["source"],
                as_of=row["as_of"],
            )
    return found
