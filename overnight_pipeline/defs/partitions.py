"""Market × date partitions (SPEC §9): one partition per market-date, keys `2026-11-30|NYSE`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    DailyPartitionsDefinition,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from overnight_pipeline.core.markets import Market

START_DATE = "2025-01-01"


def easternmost_timezone(markets: Mapping[str, Market]) -> str:
    """The timezone whose clock is furthest ahead (Tokyo for the defaults): a date exists as
    a partition as soon as it has started in any configured market."""
    probe = datetime(2026, 1, 15, 12)
    return max(
        (m.timezone for m in markets.values()),
        key=lambda tz: probe.replace(tzinfo=ZoneInfo(tz)).utcoffset() or timedelta(0),
    )


def market_date_partitions(
    markets: Mapping[str, Market], start_date: str = START_DATE
) -> MultiPartitionsDefinition:
    """`date` (daily, in the easternmost market's timezone, today included) × `market`."""
    return MultiPartitionsDefinition({
        "date": DailyPartitionsDefinition(
            start_date=start_date, timezone=easternmost_timezone(markets), end_offset=1
        ),
        "market": StaticPartitionsDefinition(sorted(markets)),
    })  # fmt: skip


def partition_key(market: str, day: date) -> MultiPartitionKey:
    return MultiPartitionKey({"date": day.isoformat(), "market": market})


def split_key(key: str | MultiPartitionKey) -> tuple[str, date]:
    """(market, date) of a `2026-11-30|NYSE` key."""
    dims = (
        key.keys_by_dimension
        if isinstance(key, MultiPartitionKey)
        else dict(zip(("date", "market"), key.split("|"), strict=True))
    )
    return dims["market"], date.fromisoformat(dims["date"])
