"""The market-data steps: exchange rates, prices and fundamentals for what the partition's
users hold, fetched once per currency or asset (never per user) through the provider chain
and stored under the market date."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import Engine

from overnight_pipeline.core.markets import Market
from overnight_pipeline.providers.base import MarketDataProvider
from overnight_pipeline.steps.reports import (
    Failure,
    FundamentalsReport,
    PricesReport,
    RatesReport,
)
from overnight_pipeline.storage.market_data import (
    store_fundamentals,
    store_prices,
    store_rates,
)
from overnight_pipeline.storage.partition_reads import (
    partition_currencies,
    partition_instruments,
    partition_user_texts,
)
from overnight_pipeline.storage.rosters import Roster, roster


def fetch_rates(
    engine: Engine,
    provider: MarketDataProvider,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID | None = None,
) -> RatesReport:
    """One USD-quoted snapshot for every currency the partition's users need
    (`correlation_id`: the calculation's roster, stored by its first step)."""
    started = time.perf_counter()
    found = partition_roster(
        engine, market=market, day=day, markets=markets, correlation_id=correlation_id
    )
    currencies = found.currencies | {markets[market].currency}
    result = provider.fetch_rates(sorted(currencies - {"USD"}), day=day)
    with engine.begin() as conn:
        stored = store_rates(conn, result, day=day)
    return RatesReport(
        users=found.user_count,
        currencies=len(currencies),
        stored=stored,
        source=result.source,
        stale=result.stale,
        stale_currencies=", ".join(sorted(result.stale_currencies)) or "-",
        stale_age_hours=None if result.age is None else round(result.age.total_seconds() / 3600, 1),
        missing=", ".join(result.missing) or "-",
        seconds=time.perf_counter() - started,
    )


def partition_roster(
    engine: Engine,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID | None,
) -> Roster:
    """The partition's users, their assets and currencies: the calculation's stored roster
    (computed and stored by its first step), or computed here without a calculation."""
    if correlation_id is not None:
        with engine.begin() as conn:
            return roster(
                conn, correlation_id=correlation_id, market=market, day=day, markets=markets
            )
    with engine.connect() as conn:
        users = partition_user_texts(conn, market=market, day=day, markets=markets)
        return Roster.of(
            users,
            partition_instruments(conn, users),
            partition_currencies(conn, users) if users else set(),
        )


@dataclass(frozen=True)
class _Held:
    """What `_fetch_held` fetched and stored."""

    users: int
    assets: int
    found: int
    stored: int
    stale: int
    missing: int
    source: str
    failures: tuple[Failure, ...]
    seconds: float


def _fetch_held(
    engine: Engine,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    stage: str,
    fetch: Callable[..., Any],
    store_result: Callable[..., int],
    correlation_id: uuid.UUID | None,
) -> _Held:
    """Fetch something for every distinct asset the partition's users hold (never per
    user) and store the fresh part of it under `day`."""
    started = time.perf_counter()
    found = partition_roster(
        engine, market=market, day=day, markets=markets, correlation_id=correlation_id
    )
    users = found.user_count
    ids = {inst: asset_id for inst, (asset_id, _) in found.instruments.items()}
    result = fetch(sorted(ids), day=day)
    with engine.begin() as conn:
        stored = store_result(conn, result, day=day, asset_ids=ids)
    items = result.quotes if stage == "prices" else result.values
    stale = (
        len(result.stale_instruments)
        if result.stale_instruments
        else (len(items) if result.stale else 0)
    )
    return _Held(
        users=users,
        assets=len(ids),
        found=len(items),
        stored=stored,
        stale=stale,
        missing=len(result.missing),
        source=result.source,
        failures=tuple({"user": "-", "stage": stage, "error": e} for e in result.errors[:20]),
        seconds=time.perf_counter() - started,
    )


def fetch_prices(
    engine: Engine,
    provider: MarketDataProvider,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID | None = None,
) -> PricesReport:
    """A price for every distinct asset the partition's users hold."""
    held = _fetch_held(
        engine,
        market=market,
        day=day,
        markets=markets,
        stage="prices",
        fetch=provider.fetch_prices,
        store_result=store_prices,
        correlation_id=correlation_id,
    )
    return PricesReport(
        users=held.users,
        assets=held.assets,
        priced=held.found,
        stored=held.stored,
        stale=held.stale,
        missing=held.missing,
        source=held.source,
        failures=held.failures,
        seconds=held.seconds,
    )


def fetch_fundamentals(
    engine: Engine,
    provider: MarketDataProvider,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID | None = None,
) -> FundamentalsReport:
    """Fundamentals for every distinct asset the partition's users hold."""
    held = _fetch_held(
        engine,
        market=market,
        day=day,
        markets=markets,
        stage="fundamentals",
        fetch=provider.fetch_fundamentals,
        store_result=store_fundamentals,
        correlation_id=correlation_id,
    )
    return FundamentalsReport(
        users=held.users,
        assets=held.assets,
        fetched=held.found,
        stored=held.stored,
        stale=held.stale,
        missing=held.missing,
        source=held.source,
        failures=held.failures,
        seconds=held.seconds,
    )
