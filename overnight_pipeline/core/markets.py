"""Markets and their exchange calendars (BEHAVIOUR §1): sessions, opens, overnight run times."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from zoneinfo import ZoneInfo, available_timezones

import exchange_calendars as xcals
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from overnight_pipeline.core.money import is_currency

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


class MarketsFileError(ValueError):
    """MARKETS_FILE cannot be used; the message names the file and every problem in it."""


_CODE = re.compile(r"[A-Z0-9]{1,16}")  # the `market` columns are VARCHAR(16)


class _MarketIn(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    code: str
    calendar: str
    timezone: str
    currency: str

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not _CODE.fullmatch(value):
            raise ValueError("must be 1-16 capital letters or digits, like NYSE")
        return value

    @field_validator("calendar")
    @classmethod
    def _known_calendar(cls, value: str) -> str:
        if value not in _calendar_names():
            raise ValueError("is not an exchange-calendars calendar (e.g. XNYS)")
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        if value not in available_timezones():
            raise ValueError("is not an IANA time zone (e.g. America/New_York)")
        return value

    @field_validator("currency")
    @classmethod
    def _currency(cls, value: str) -> str:
        if not is_currency(value):
            raise ValueError("is not an ISO 4217 currency code (e.g. USD)")
        return value


@lru_cache(maxsize=1)
def _calendar_names() -> frozenset[str]:
    return frozenset(xcals.get_calendar_names(include_aliases=True))


def load_markets(path: Path | None = None) -> dict[str, Market]:
    """The configured markets: the six defaults, or the list in a JSON file
    (`[{"code", "calendar", "timezone", "currency"}]`); `MarketsFileError` lists what is wrong."""
    if path is None:
        return {m.code: m for m in DEFAULT_MARKETS}
    try:
        raw = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise MarketsFileError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:
        # JSONDecodeError and UnicodeDecodeError are both ValueErrors.
        raise MarketsFileError(f"{path}: not a UTF-8 JSON file ({str(exc)[:200]})") from None
    if not isinstance(raw, list) or not raw:
        raise MarketsFileError(f"{path}: must be a non-empty JSON list of markets")
    problems: list[str] = []
    markets: dict[str, Market] = {}
    for index, item in enumerate(raw):
        try:
            market = _MarketIn.model_validate(item)
        except ValidationError as exc:
            for err in exc.errors(include_url=False):
                where = "".join(f".{p}" for p in err["loc"])
                got = err.get("input")
                shown = "" if isinstance(got, dict | list) else f" (got {str(got)[:60]!r})"
                problems.append(
                    f"[{index}]{where}: {err['msg'].removeprefix('Value error, ')}{shown}"
                )
            continue
        if market.code in markets:
            problems.append(f"[{index}].code: duplicate market {market.code!r}")
        markets[market.code] = Market(
            market.code, market.calendar, market.timezone, market.currency
        )
    if problems:
        raise MarketsFileError(f"{path}: " + "; ".join(problems))
    return markets


@lru_cache(maxsize=32)
def calendar(name: str) -> xcals.ExchangeCalendar:
    """The exchange calendar `name`, built once per process (≈ 20 years back and 1 forward;
    ≈ 140 ms each): the schedules build the markets' calendars when the definitions load,
    so the step processes forked from the multiprocess executor's forkserver inherit them."""
    return xcals.get_calendar(name)


# Memoized: readiness judges every day of a month for every market at each metrics refresh
# and sensor tick, and a calendar lookup is slow at that count (docs/PERFORMANCE.md,
# "Metrics on every request").
@lru_cache(maxsize=8192)
def is_session(market: Market, day: date) -> bool:
    """Whether `day` is a trading session of the market's exchange calendar."""
    cal = calendar(market.calendar)
    ts = pd.Timestamp(day)
    if ts < cal.first_session or ts > cal.last_session:
        return False
    return bool(cal.is_session(ts))


@lru_cache(maxsize=8192)
def session_open_utc(market: Market, day: date) -> datetime:
    """The session's open in UTC; for a non-session day, the regular open time that day
    would have had (the calendar's standard open in local time)."""
    cal = calendar(market.calendar)
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


def held_markets(
    rows: Iterable[tuple[uuid.UUID, str]], markets: Mapping[str, Market]
) -> dict[uuid.UUID, set[str]]:
    """The configured markets each user holds an asset of, from (user id, market code) rows;
    a market that is not configured is ignored, and a user holding none is absent."""
    held: dict[uuid.UUID, set[str]] = {}
    for user_id, code in rows:
        if code in markets:
            held.setdefault(user_id, set()).add(code)
    return held


def home_code(codes: Iterable[str], markets: Mapping[str, Market], day: date) -> str:
    """The code of the home market on `day` of a user holding assets of the markets `codes`."""
    return home_market([markets[c] for c in codes], day).code


def users_at_home(
    held: Mapping[uuid.UUID, set[str]], *, market: str, day: date, markets: Mapping[str, Market]
) -> list[uuid.UUID]:
    """The users of `held` (as `held_markets` gives it) whose home market on `day` is
    `market`, sorted; the rule is decided once per distinct set of markets."""
    home: dict[frozenset[str], str] = {}
    chosen = []
    for user_id, codes in held.items():
        key = frozenset(codes)
        if key not in home:
            home[key] = home_code(codes, markets, day)
        if home[key] == market:
            chosen.append(user_id)
    return sorted(chosen)


def newest_home(
    codes: Iterable[str], newest: Mapping[str, date], markets: Mapping[str, Market]
) -> tuple[str, date] | None:
    """The (market, day) a user holding assets of the markets `codes` is recalculated with,
    given the newest stored day of each market (`newest`): its home market on the newest
    of its markets' days, with that market's newest day. None when that market (or every
    one of them) has nothing stored yet: the user waits for the night."""
    codes = list(codes)
    nights = [newest[c] for c in codes if c in newest]
    if not nights:
        return None
    home = home_code(codes, markets, max(nights))
    if home not in newest:
        return None
    return home, newest[home]


def by_home(
    assigned: Mapping[uuid.UUID, tuple[str, date]],
) -> dict[tuple[str, date], list[uuid.UUID]]:
    """Users grouped by the (market, day) they are recalculated with, sorted."""
    groups: dict[tuple[str, date], list[uuid.UUID]] = {}
    for uid, key in sorted(assigned.items()):
        groups.setdefault(key, []).append(uid)
    return groups


def market_by_code(markets: Mapping[str, Market], code: str) -> Market:
    try:
        return markets[code]
    except KeyError:
        raise UnknownMarketError(code, markets) from None
