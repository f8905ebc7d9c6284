"""Markets and their exchange calendars (SPEC §1): sessions, opens, overnight run times."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo

import exchange_calendars as xcals
import pandas as pd

RUN_LEAD = timedelta(hours=2)


@dataclass(frozen=True)
class Market:
    code: str
    calendar: str
    timezone: str
    currency: str

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


DEFAULT_MARKETS: tuple[Market, ...] = (
    Market("NYSE", "XNYS", "America/New_York", "USD"),
    Market("NASDAQ", "XNAS", "America/New_York", "USD"),
    Market("B3", "BVMF", "America/Sao_Paulo", "BRL"),
    Market("LSE", "XLON", "Europe/London", "GBP"),
    Market("TSE", "XTKS", "Asia/Tokyo", "JPY"),
    Market("XETRA", "XETR", "Europe/Berlin", "EUR"),
)


class UnknownMarketError(KeyError):
    def __init__(self, code: str, known: Iterable[str]) -> None:
        super().__init__(f"unknown market {code!r}; configured: {', '.join(known)}")


def load_markets(path: Path | None = None) -> dict[str, Market]:
    """The configured markets: the six defaults, or the list in a JSON file
    (`[{"code", "calendar", "timezone", "currency"}]`)."""
    if path is None:
        return {m.code: m for m in DEFAULT_MARKETS}
    raw = json.loads(Path(path).read_text())
    markets = {}
    for index, item in enumerate(raw):
        try:
            market = Market(item["code"], item["calendar"], item["timezone"], item["currency"])
            ZoneInfo(market.timezone)
            _calendar(market.calendar)
        except Exception as exc:
            raise ValueError(f"{path}: markets[{index}] is invalid: {exc}") from None
        markets[market.code] = market
    return markets


@lru_cache(maxsize=32)
def _calendar(name: str) -> xcals.ExchangeCalendar:
    # Calendars cover roughly 20 years back and 1 forward; built once per process.
    return xcals.get_calendar(name)


def is_session(market: Market, day: date) -> bool:
    """Whether `day` is a trading session of the market's exchange calendar."""
    cal = _calendar(market.calendar)
    ts = pd.Timestamp(day)
    if ts < cal.first_session or ts > cal.last_session:
        return False
    return bool(cal.is_session(ts))


def session_open_utc(market: Market, day: date) -> datetime:
    """The session's open in UTC; for a non-session day, the regular open time that day
    would have had (the calendar's standard open in local time)."""
    cal = _calendar(market.calendar)
    if is_session(market, day):
        opened: datetime = cal.session_open(pd.Timestamp(day)).to_pydatetime()
        return opened
    local_open = cal.open_times[-1][1]
    return datetime.combine(day, local_open, tzinfo=market.tz).astimezone(ZoneInfo("UTC"))


def overnight_run_time(market: Market, day: date) -> datetime:
    """When the overnight run for `day` fires: open − 2 h, in the market's local time."""
    return (session_open_utc(market, day) - RUN_LEAD).astimezone(market.tz)


def home_market(markets: Iterable[Market], day: date) -> Market:
    """The user's home market on `day`: the configured market whose session opens earliest
    (UTC). Markets in session that day win over closed ones; ties go to the first code."""
    candidates = sorted(set(markets), key=lambda m: m.code)
    if not candidates:
        raise ValueError("a user with no holdings has no configured market")
    return min(
        candidates,
        key=lambda m: (not is_session(m, day), session_open_utc(m, day), m.code),
    )


def market_by_code(markets: Mapping[str, Market], code: str) -> Market:
    try:
        return markets[code]
    except KeyError:
        raise UnknownMarketError(code, markets) from None
