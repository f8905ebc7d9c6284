from __future__ import annotations

import json
import uuid
from datetime import UTC, date, datetime

import pytest

from overnight_pipeline.core.markets import (
    UnknownMarketError,
    by_home,
    held_markets,
    home_market,
    is_session,
    load_markets,
    market_by_code,
    newest_home,
    overnight_run_time,
    session_open_utc,
    users_at_home,
)

M = load_markets()


def test_six_default_markets_with_their_calendars() -> None:
    assert {c: (m.calendar, m.timezone, m.currency) for c, m in M.items()} == {
        "NYSE": ("XNYS", "America/New_York", "USD"),
        "NASDAQ": ("XNAS", "America/New_York", "USD"),
        "B3": ("BVMF", "America/Sao_Paulo", "BRL"),
        "LSE": ("XLON", "Europe/London", "GBP"),
        "TSE": ("XTKS", "Asia/Tokyo", "JPY"),
        "XETRA": ("XETR", "Europe/Berlin", "EUR"),
    }


def test_holidays_and_weekends_are_not_sessions() -> None:
    assert not is_session(M["NYSE"], date(2026, 11, 26))  # Thanksgiving
    assert is_session(M["LSE"], date(2026, 11, 26))
    assert not is_session(M["TSE"], date(2026, 11, 28))  # Saturday


def test_open_follows_dst_and_run_time_is_two_hours_before_in_local_time() -> None:
    # US clocks change on 2026-03-08: the NYSE open moves from 14:30 to 13:30 UTC.
    assert session_open_utc(M["NYSE"], date(2026, 3, 6)) == datetime(2026, 3, 6, 14, 30, tzinfo=UTC)
    assert session_open_utc(M["NYSE"], date(2026, 3, 9)) == datetime(2026, 3, 9, 13, 30, tzinfo=UTC)
    for day in (date(2026, 3, 6), date(2026, 3, 9)):
        run = overnight_run_time(M["NYSE"], day)
        assert (run.hour, run.minute, run.date()) == (7, 30, day)
    tokyo = overnight_run_time(M["TSE"], date(2026, 11, 30))
    assert (tokyo.hour, tokyo.date()) == (7, date(2026, 11, 30))
    assert tokyo.astimezone(UTC) == datetime(2026, 11, 29, 22, 0, tzinfo=UTC)  # previous UTC day


def test_home_market_is_the_earliest_open_that_day() -> None:
    day = date(2026, 11, 30)
    assert home_market([M["NYSE"], M["TSE"]], day).code == "TSE"
    assert home_market([M["NYSE"], M["B3"]], day).code == "B3"
    assert home_market([M["XETRA"], M["LSE"]], day).code == "LSE"  # same 08:00 UTC: code order
    # On Thanksgiving NYSE is closed; a NYSE+B3 user still belongs to B3.
    assert home_market([M["NYSE"], M["B3"]], date(2026, 11, 26)).code == "B3"


def test_users_are_grouped_by_their_home_market_once_unconfigured_markets_are_ignored() -> None:
    u1, u2, u3, u4 = (uuid.UUID(int=i) for i in (4, 3, 2, 1))
    rows = [(u1, "NYSE"), (u1, "TSE"), (u2, "NYSE"), (u2, "B3"), (u3, "ASX"), (u4, "LSE")]
    held = held_markets(rows, M)
    assert held == {u1: {"NYSE", "TSE"}, u2: {"NYSE", "B3"}, u4: {"LSE"}}  # ASX: not configured
    day = date(2026, 11, 30)
    assert users_at_home(held, market="TSE", day=day, markets=M) == [u1]
    assert users_at_home(held, market="B3", day=day, markets=M) == [u2]
    assert users_at_home(held, market="NYSE", day=day, markets=M) == []
    assert users_at_home(held, market="LSE", day=day, markets=M) == [u4]


def test_a_recalculation_uses_the_home_market_of_the_newest_stored_night() -> None:
    newest = {"NYSE": date(2026, 11, 27), "TSE": date(2026, 11, 30)}
    assert newest_home({"NYSE", "TSE"}, newest, M) == ("TSE", date(2026, 11, 30))
    # Nothing stored for B3, the home market of a NYSE+B3 user: it waits for the night.
    assert newest_home({"NYSE", "B3"}, newest, M) is None
    assert newest_home({"LSE"}, newest, M) is None
    assert newest_home({"NYSE"}, newest, M) == ("NYSE", date(2026, 11, 27))
    u1, u2, u3 = (uuid.UUID(int=i) for i in (3, 1, 2))
    assigned = {u1: ("TSE", date(2026, 11, 30)), u2: ("NYSE", date(2026, 11, 27))}
    assigned[u3] = ("TSE", date(2026, 11, 30))
    assert by_home(assigned) == {
        ("NYSE", date(2026, 11, 27)): [u2],
        ("TSE", date(2026, 11, 30)): [u3, u1],
    }


def test_markets_can_be_overridden_from_a_file(tmp_path) -> None:
    path = tmp_path / "markets.json"
    path.write_text(
        json.dumps(
            [{"code": "ASX", "calendar": "XASX", "timezone": "Australia/Sydney", "currency": "AUD"}]
        )
    )
    assert list(load_markets(path)) == ["ASX"]
    path.write_text(
        json.dumps([{"code": "X", "calendar": "NOPE", "timezone": "UTC", "currency": "USD"}])
    )
    with pytest.raises(ValueError, match=r"\[0\]\.calendar: is not an exchange-calendars calendar"):
        load_markets(path)
    with pytest.raises(UnknownMarketError, match="MOON"):
        market_by_code(M, "MOON")
