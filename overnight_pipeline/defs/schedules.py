"""One schedule per market (BEHAVIOUR §9): 2 h before the market's regular open, in its
own timezone (so DST is followed), on the sessions of its exchange calendar only.

The cron ticks every day; a tick on a weekend or holiday returns a `SkipReason` naming it,
so the UI shows why nothing ran. The market date of a tick is the fire time's local date in
the market's timezone (Tokyo fires at 07:00 JST, the previous UTC day); the `date`
dimension lives in the easternmost timezone with `end_offset=1`, so that key already exists.
`OVERNIGHT_JOB_CRON` replaces every market's cron (still read in each market's timezone).
"""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

from collections.abc import Mapping
from datetime import UTC, date, datetime, time

import pandas as pd
from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from overnight_pipeline.core.markets import RUN_LEAD, Market, calendar, is_session
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import MARKETS, partition_key
from overnight_pipeline.settings import get_settings


def regular_open(market: Market) -> time:
    """The market's current regular open, local time (the exchange calendar's)."""
    opened: time = calendar(market.calendar).open_times[-1][1]
    return opened


def fire_time(market: Market) -> time:
    """Local time of the overnight run: the regular open minus two hours."""
    return (datetime.combine(date(2000, 1, 3), regular_open(market)) - RUN_LEAD).time()


def schedule_cron(market: Market, override: str | None = None) -> str:
    """Every day at the fire time (a tick on a closed day skips with its reason)."""
    if override:
        return override
    at = fire_time(market)
    return f"{at.minute} {at.hour} * * *"


def closed_reason(market: Market, day: date) -> str | None:
    """Why `day` is not a session of the market (None when it is): the weekend, the holiday's
    name from the exchange calendar, or the calendar's range."""
    if is_session(market, day):
        return None
    cal = calendar(market.calendar)
    ts = pd.Timestamp(day)
    if ts < cal.first_session or ts > cal.last_session:
        return (
            f"outside the {market.calendar} calendar's range "
            f"({cal.first_session.date()} to {cal.last_session.date()}); "
            "update exchange-calendars"
        )
    weekmask = getattr(cal, "weekmask", "1111100")
    if weekmask[day.weekday()] == "0":
        return f"{day:%A}, weekend"
    holidays = cal.regular_holidays
    if holidays is not None:
        names = holidays.holidays(ts, ts, return_name=True)
        if len(names):
            return f"{day:%A}, {names.iloc[0]} ({market.calendar} holiday)"
    return f"{day:%A}, {market.calendar} market closure"


def market_date_of_tick(market: Market, fired_at: datetime) -> date:
    """The market date a tick computes: the fire time's date in the market's timezone."""
    return fired_at.astimezone(market.tz).date()


def market_schedule(
    market: Market, job_name: str, *, cron_override: str | None = None
) -> ScheduleDefinition:
    """The overnight schedule of one market."""
    name = f"overnight_{market.code.lower()}"
    cron = schedule_cron(market, cron_override)

    @schedule(
        name=name,
        cron_schedule=cron,
        execution_timezone=market.timezone,
        job_name=job_name,
        # Stopped until an operator starts it (the UI's toggle, or `dagster schedule start
        # --start-all`): a laptop running `make dev` must not fire tonight's runs unasked.
        default_status=DefaultScheduleStatus.STOPPED,
        tags={"overnight/market": market.code},
        description=f"{market.code}: the overnight partition at {cron!r} {market.timezone} "
        f"(2 h before the regular open unless OVERNIGHT_JOB_CRON is set), on {market.calendar} "
        "sessions only.",
    )
    def _market_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
        fired_at = context.scheduled_execution_time or datetime.now(UTC)
        day = market_date_of_tick(market, fired_at)
        reason = closed_reason(market, day)
        if reason is not None:
            return SkipReason(f"{market.code} {day.isoformat()} is not a session: {reason}")
        return RunRequest(
            run_key=f"{market.code}|{day.isoformat()}",
            partition_key=partition_key(market.code, day),
            tags={"overnight/trigger": "schedule"},
        )

    return _market_schedule


def market_schedules(
    markets: Mapping[str, Market],
    job_name: str,
    *,
    cron_override: str | None = None,
) -> list[ScheduleDefinition]:
    return [market_schedule(m, job_name, cron_override=cron_override) for m in markets.values()]


def fire_times(markets: Mapping[str, Market], day: date) -> list[tuple[str, str, datetime, str]]:
    """Per market on `day` (its local date): the local fire time, that instant in UTC, and
    what the tick does ("runs" or the skip reason)."""
    rows = []
    for code, market in markets.items():
        local = datetime.combine(day, fire_time(market), tzinfo=market.tz)
        reason = closed_reason(market, day)
        rows.append(
            (
                code,
                f"{local:%H:%M} {market.timezone}",
                local.astimezone(UTC),
                "runs" if reason is None else f"skips: {reason}",
            )
        )
    return rows


if __name__ == "__main__":  # python -m overnight_pipeline.defs.schedules [YYYY-MM-DD]
    import sys

    from overnight_pipeline.core.markets import load_markets

    when = date.fromisoformat(sys.argv[1]) if len(sys.argv) > 1 else datetime.now(UTC).date()
    for code, local, utc, what in fire_times(load_markets(), when):
        print(f"{code:<8} {local:<28} {utc:%Y-%m-%d %H:%M} UTC  {what}")


# One per configured market; OVERNIGHT_JOB_CRON (a deployment's choice) replaces each cron.
overnight_schedules = market_schedules(
    MARKETS, OVERNIGHT_JOB, cron_override=get_settings().overnight_job_cron
)
