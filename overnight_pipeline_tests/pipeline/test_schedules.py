"""Per-market schedules (BEHAVIOUR §9): evaluated at their fire times with Dagster's own
schedule machinery, across DST changes and market holidays."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from dagster import DagsterInstance, Definitions, RunRequest, SkipReason, build_schedule_context
from dagster._utils.schedules import cron_string_iterator  # the scheduler's own tick times

from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.assets import OVERNIGHT_ASSETS
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB, overnight_job
from overnight_pipeline.defs.readiness import market_readiness_checks
from overnight_pipeline.defs.schedules import fire_times, market_schedules
from overnight_pipeline.settings import load_settings

MARKETS = load_markets()


@pytest.fixture(scope="module")
def defs() -> Definitions:
    return definitions_for(load_settings(database_url="sqlite:///:memory:"), env_vars=False)


@pytest.fixture(scope="module")
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        yield instance


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def ticks(defs: Definitions, market: str, start: str, count: int) -> list[datetime]:
    """The next `count` fire times of a market's schedule from `start` (UTC), as the
    scheduler computes them."""
    schedule = defs.resolve_schedule_def(f"overnight_{market.lower()}")
    found = cron_string_iterator(
        utc(start).timestamp(), schedule.cron_schedule, schedule.execution_timezone
    )
    return [next(found).astimezone(UTC) for _ in range(count)]


def evaluate(defs: Definitions, instance: DagsterInstance, market: str, at: datetime):
    schedule = defs.resolve_schedule_def(f"overnight_{market.lower()}")
    context = build_schedule_context(
        instance=instance, scheduled_execution_time=at, repository_def=defs.get_repository_def()
    )
    return schedule.evaluate_tick(context)


def requested(defs: Definitions, instance: DagsterInstance, market: str, at: datetime) -> str:
    """The partition key the tick at `at` asks for (it must be a valid key at that time)."""
    result = evaluate(defs, instance, market, at)
    assert result.skip_message is None, result.skip_message
    (request,) = result.run_requests
    assert isinstance(request, RunRequest)
    assert request.run_key == f"{market}|{request.partition_key.split('|')[0]}"
    assert request.tags["dagster/partition"] == request.partition_key
    return str(request.partition_key)


@pytest.mark.parametrize(
    ("market", "before", "after"),
    [
        # New York leaves EST on Sunday 8 March 2026: 07:30 local is 12:30, then 11:30 UTC.
        ("NYSE", ("2026-03-06 12:30", "2026-03-06|NYSE"), ("2026-03-09 11:30", "2026-03-09|NYSE")),
        # São Paulo has no DST: 08:00 BRT stays 11:00 UTC while New York moves.
        ("B3", ("2026-03-06 11:00", "2026-03-06|B3"), ("2026-03-09 11:00", "2026-03-09|B3")),
        # London enters BST on Sunday 29 March 2026: 06:00 local is 06:00, then 05:00 UTC.
        ("LSE", ("2026-03-27 06:00", "2026-03-27|LSE"), ("2026-03-30 05:00", "2026-03-30|LSE")),
        # Tokyo fires at 07:00 JST, 22:00 UTC on the previous UTC day, for the Tokyo date.
        ("TSE", ("2026-03-26 22:00", "2026-03-27|TSE"), ("2026-03-29 22:00", "2026-03-30|TSE")),
    ],
)
def test_each_market_fires_two_hours_before_its_open_across_a_dst_change(
    defs: Definitions,
    instance: DagsterInstance,
    market: str,
    before: tuple[str, str],
    after: tuple[str, str],
) -> None:
    # The scheduler's own fire times, in UTC, move with the market's DST only.
    fire_times = ticks(defs, market, "2026-03-01 00:00", 40)
    assert utc(before[0]) in fire_times and utc(after[0]) in fire_times
    for when, key in (before, after):
        assert requested(defs, instance, market, utc(when)) == key


def test_fire_times_hold_across_the_autumn_dst_change_too(
    defs: Definitions, instance: DagsterInstance
) -> None:
    # New York back to EST on 1 November 2026, London to GMT on 25 October 2026.
    assert utc("2026-10-30 11:30") in ticks(defs, "NYSE", "2026-10-29 00:00", 10)
    assert utc("2026-11-02 12:30") in ticks(defs, "NYSE", "2026-10-29 00:00", 10)
    assert requested(defs, instance, "NYSE", utc("2026-11-02 12:30")) == "2026-11-02|NYSE"
    assert utc("2026-10-23 05:00") in ticks(defs, "LSE", "2026-10-20 00:00", 10)
    assert utc("2026-10-26 06:00") in ticks(defs, "LSE", "2026-10-20 00:00", 10)
    assert requested(defs, instance, "LSE", utc("2026-10-26 06:00")) == "2026-10-26|LSE"


@pytest.mark.parametrize(
    ("market", "at", "reason", "open_market", "open_at"),
    [
        ("NYSE", "2026-11-26 12:30", "Thanksgiving", "LSE", "2026-11-26 06:00"),
        ("B3", "2026-02-16 11:00", "Carnaval", "LSE", "2026-02-16 06:00"),
        ("LSE", "2026-12-28 06:00", "Boxing Day", "NYSE", "2026-12-28 12:30"),
        # Monday 23 November 2026 in Tokyo, fired on Sunday evening UTC.
        ("TSE", "2026-11-22 22:00", "Labor Thanksgiving Day", "NYSE", "2026-11-23 12:30"),
    ],
)
def test_a_market_holiday_is_skipped_with_its_name(
    defs: Definitions,
    instance: DagsterInstance,
    market: str,
    at: str,
    reason: str,
    open_market: str,
    open_at: str,
) -> None:
    result = evaluate(defs, instance, market, utc(at))
    assert not result.run_requests
    assert result.skip_message and reason in result.skip_message
    assert market in result.skip_message and "holiday" in result.skip_message
    # Holidays are per market: another one is open that day and runs.
    assert evaluate(defs, instance, open_market, utc(open_at)).run_requests


def test_a_weekend_is_skipped_as_the_weekend(defs: Definitions, instance: DagsterInstance) -> None:
    result = evaluate(defs, instance, "XETRA", utc("2026-11-28 06:00"))
    assert not result.run_requests
    assert result.skip_message == "XETRA 2026-11-28 is not a session: Saturday, weekend"
    # Tokyo's Monday fires on Sunday UTC; its Saturday fires on Friday UTC and skips.
    assert requested(defs, instance, "TSE", utc("2026-11-29 22:00")) == "2026-11-30|TSE"
    assert (
        "Saturday, weekend" in evaluate(defs, instance, "TSE", utc("2026-11-27 22:00")).skip_message
    )


def test_every_market_requests_a_key_that_exists_at_its_fire_time(
    defs: Definitions, instance: DagsterInstance
) -> None:
    # A regular Wednesday for all six markets; each tick is validated by Dagster against the
    # partitions as they are at that instant (an unknown key would raise).
    for code, market in MARKETS.items():
        (fire,) = ticks(defs, code, "2026-12-01 13:00", 1)
        local = fire.astimezone(ZoneInfo(market.timezone))
        assert local.date().isoformat() == "2026-12-02"
        assert requested(defs, instance, code, fire) == f"2026-12-02|{code}"


def test_a_tick_evaluated_twice_asks_for_the_same_run(
    defs: Definitions, instance: DagsterInstance
) -> None:
    first = evaluate(defs, instance, "NYSE", utc("2026-12-01 12:30")).run_requests
    second = evaluate(defs, instance, "NYSE", utc("2026-12-01 12:30")).run_requests
    assert [r.run_key for r in first] == [r.run_key for r in second] == ["NYSE|2026-12-01"]


def test_overnight_job_cron_overrides_every_market_in_its_own_timezone(
    instance: DagsterInstance,
) -> None:
    # OVERNIGHT_JOB_CRON shapes the schedules when the definitions load (defs.schedules reads
    # it from the settings once): here the same schedules built with it, beside the job.
    base = definitions_for(load_settings(database_url="sqlite:///:memory:"), env_vars=False)
    defs = Definitions(
        assets=OVERNIGHT_ASSETS,
        asset_checks=[market_readiness_checks],
        jobs=[overnight_job],
        schedules=market_schedules(MARKETS, OVERNIGHT_JOB, cron_override="0 4 * * 1-5"),
        resources=base.resources,
    )
    for code, market in MARKETS.items():
        schedule = defs.resolve_schedule_def(f"overnight_{code.lower()}")
        assert schedule.cron_schedule == "0 4 * * 1-5"
        assert schedule.execution_timezone == market.timezone
    # 04:00 in Tokyo on Wednesday 2 December 2026 is 19:00 UTC on the 1st.
    assert ticks(defs, "TSE", "2026-12-01 12:00", 1) == [utc("2026-12-01 19:00")]
    assert requested(defs, instance, "TSE", utc("2026-12-01 19:00")) == "2026-12-02|TSE"
    skipped = evaluate(defs, instance, "NYSE", utc("2026-11-26 09:00"))
    assert skipped.skip_message and "Thanksgiving" in skipped.skip_message


def test_skip_reasons_are_dagster_skips(defs: Definitions, instance: DagsterInstance) -> None:
    schedule = defs.resolve_schedule_def("overnight_nyse")
    context = build_schedule_context(
        instance=instance,
        scheduled_execution_time=utc("2026-11-26 12:30"),
        repository_def=defs.get_repository_def(),
    )
    assert isinstance(schedule(context), SkipReason)


def test_the_operator_table_of_fire_times() -> None:
    rows = {
        code: (local, utc, what)
        for code, local, utc, what in fire_times(MARKETS, datetime(2026, 11, 30).date())
    }
    assert rows["TSE"] == ("07:00 Asia/Tokyo", utc("2026-11-29 22:00"), "runs")
    assert rows["NYSE"][1] == utc("2026-11-30 12:30")
    sunday = fire_times(MARKETS, datetime(2026, 11, 29).date())
    assert {what for *_, what in sunday} == {"skips: Sunday, weekend"}
