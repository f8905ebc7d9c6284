"""Market × date partitions (BEHAVIOUR §9): a partition per market-date, keys `2026-11-30|NYSE`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dagster import (
    AssetExecutionContext,
    DailyPartitionsDefinition,
    Failure,
    MultiPartitionKey,
    MultiPartitionsDefinition,
    StaticPartitionsDefinition,
)

from overnight_pipeline.core.markets import Market, load_markets
from overnight_pipeline.settings import get_settings

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
    return MultiPartitionsDefinition(
        {
            "date": DailyPartitionsDefinition(
                start_date=start_date, timezone=easternmost_timezone(markets), end_offset=1
            ),
            "market": StaticPartitionsDefinition(sorted(markets)),
        }
    )


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


PARTITION_TAG = "dagster/partition"
DIMENSION_TAG_PREFIX = "dagster/partition/"
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"
BACKFILL_TAG = "dagster/backfill"


class PartitionMismatch(Exception):
    """A run whose tags disagree about which market-dates it builds."""


def _is_partition_tag(key: str) -> bool:
    return (
        key == PARTITION_TAG
        or key.startswith(DIMENSION_TAG_PREFIX)
        or key in (RANGE_START_TAG, RANGE_END_TAG)
    )


def check_run_partitions(
    tags: Mapping[str, str], keys: Sequence[str], *, backfill_tags: Mapping[str, str] | None = None
) -> list[str]:
    """`keys` (the partitions Dagster gives the run's steps) when the run's tags all name the
    same ones; raises `PartitionMismatch` naming both sides otherwise.

    Dagster reads a multi-partition run's key from its `dagster/partition/<dimension>` tags
    before `dagster/partition` and the range tags, so tags copied from another partition (a
    job backfill under a single-run policy, or partition tags typed at launch) would make the
    run silently build that other partition. `backfill_tags` are the tags given when the
    run's backfill was launched: they override each run's own partition tags.
    """
    keys = [str(k) for k in keys]
    overridden = sorted(k for k in (backfill_tags or {}) if _is_partition_tag(k))
    if overridden:
        raise PartitionMismatch(
            f"the backfill was launched with partition tags ({', '.join(overridden)}), which "
            "Dagster copies onto every run of it, so each run would build the same partition; "
            "relaunch the backfill without them"
        )
    named: dict[str, list[str]] = {}
    dims = {
        k.removeprefix(DIMENSION_TAG_PREFIX): v
        for k, v in tags.items()
        if k.startswith(DIMENSION_TAG_PREFIX)
    }
    if dims:
        if set(dims) != {"date", "market"}:
            raise PartitionMismatch(f"partition dimension tags {dims} are not date and market")
        named["dagster/partition/date, dagster/partition/market"] = [
            f"{dims['date']}|{dims['market']}"
        ]
    if PARTITION_TAG in tags:
        named[PARTITION_TAG] = [tags[PARTITION_TAG]]
    start, end = tags.get(RANGE_START_TAG), tags.get(RANGE_END_TAG)
    if start or end:
        if not (start and end):
            raise PartitionMismatch(
                f"a partition range needs both {RANGE_START_TAG} and "
                f"{RANGE_END_TAG} (got {start!r} .. {end!r})"
            )
        (first_market, first), (last_market, last) = split_key(start), split_key(end)
        if first_market != last_market or last < first:
            raise PartitionMismatch(
                f"the range {start} .. {end} is not one market's dates in order; launch one "
                "range per market"
            )
        named[f"{RANGE_START_TAG} .. {RANGE_END_TAG}"] = [
            f"{first + timedelta(days=i)}|{first_market}" for i in range((last - first).days + 1)
        ]
    named["the steps' partition keys"] = sorted(keys)
    distinct = {tuple(sorted(v)) for v in named.values()}
    if len(distinct) > 1:
        said = "; ".join(f"{source} = {', '.join(v)}" for source, v in named.items())
        raise PartitionMismatch(f"the run's partition tags disagree: {said}")
    return keys


def guard_partitions(context: AssetExecutionContext) -> list[str]:
    """The run's partition keys, checked by `check_run_partitions`; a mismatch fails the step
    before any write, without retries, naming what disagrees."""
    run = context.run
    backfill_tags = None
    backfill_id = run.tags.get(BACKFILL_TAG)
    if backfill_id:
        backfill = context.instance.get_backfill(backfill_id)
        backfill_tags = backfill.tags if backfill is not None else None
    try:
        return check_run_partitions(run.tags, context.partition_keys, backfill_tags=backfill_tags)
    except PartitionMismatch as exc:
        raise Failure(
            description=f"refused run {run.run_id}: {exc}. Nothing was written.",
            allow_retries=False,
        ) from exc


# The configured markets (MARKETS_FILE), read once when the definitions load: they shape
# the partitions, the schedules and the readiness checks, like any Dagster project's
# environment. Everything a run may tune comes from the resources instead.
MARKETS = load_markets(get_settings().markets_file)
PARTITIONS = market_date_partitions(MARKETS)
