"""Stored market data: set-based upserts after a fetch, and the newest value per item."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal

import pytest
from sqlalchemy import Connection, func, select

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.base import FundamentalsResult, PricesResult, Quote, RatesResult
from overnight_pipeline.storage.bulk import upsert
from overnight_pipeline.storage.market_data import (
    newest_fundamentals,
    newest_prices,
    newest_rates,
    store_fundamentals,
    store_prices,
    store_rates,
)
from overnight_pipeline.storage.models import (
    asset_fundamentals_table,
    asset_prices_table,
    assets_table,
    exchange_rates_table,
)

D1, D2, D3 = date(2031, 3, 3), date(2031, 3, 4), date(2031, 3, 5)
STAMP = datetime(2031, 3, 4, 6, 0, tzinfo=UTC)
KO, PETR = ("MDTEST", "KO"), ("MDTEST", "PETR4")


@pytest.fixture
def ids(db_conn: Connection) -> dict[tuple[str, str], uuid.UUID]:
    made = {KO: uuid.uuid4(), PETR: uuid.uuid4()}
    rows = [
        {"id": made[inst], "market": inst[0], "symbol": inst[1], "currency": currency}
        for inst, currency in [(KO, "USD"), (PETR, "BRL")]
    ]
    upsert(db_conn, assets_table, rows, key=["market", "symbol"], update=[])
    return made


def _rates(
    usd_to: dict[str, str], *, stale: bool = False, stale_currencies: frozenset[str] = frozenset()
) -> RatesResult:
    return RatesResult(
        {c: Decimal(r) for c, r in usd_to.items()},
        "test",
        STAMP,
        stale=stale,
        stale_currencies=stale_currencies,
    )


def test_rates_round_trip_exactly_and_the_newest_on_or_before_wins(db_conn: Connection) -> None:
    assert store_rates(db_conn, _rates({"BRL": "5.012345678901", "EUR": "0.92"}), day=D1) == 2
    assert store_rates(db_conn, _rates({"BRL": "5.1"}), day=D3) == 1

    on_d2 = newest_rates(db_conn, ["BRL", "EUR", "USD", "XXX"], on_or_before=D2)
    on_d3 = newest_rates(db_conn, ["brl"], on_or_before=D3)

    assert {c: (r.rate, r.rate_date) for c, r in on_d2.items()} == {
        "BRL": (Decimal("5.012345678901"), D1),
        "EUR": (Decimal("0.92"), D1),
    }
    assert on_d2["BRL"].source == "test" and on_d2["BRL"].as_of == STAMP
    assert on_d3["BRL"].rate == Decimal("5.1")


def test_storing_twice_is_an_idempotent_upsert(
    db_conn: Connection, ids: dict[tuple[str, str], uuid.UUID]
) -> None:
    quotes = {KO: Quote(Decimal("61.20"), "USD", STAMP)}
    for _ in range(2):
        store_rates(db_conn, _rates({"BRL": "5"}), day=D1)
        store_prices(db_conn, PricesResult(quotes, [], [], "test"), day=D1, asset_ids=ids)
    store_prices(
        db_conn,
        PricesResult({KO: Quote(Decimal("62"), "USD", STAMP)}, [], [], "test"),
        day=D1,
        asset_ids=ids,
    )

    p = asset_prices_table
    rows = db_conn.execute(select(p.c.price).where(p.c.asset_id == ids[KO])).scalars().all()
    assert rows == [Decimal("62")]
    r = exchange_rates_table
    assert db_conn.execute(select(func.count()).where(r.c.rate_date == D1)).scalar_one() == 1


def test_stale_items_are_not_written_back_as_fresh(
    db_conn: Connection, ids: dict[tuple[str, str], uuid.UUID]
) -> None:
    quotes = {
        KO: Quote(Decimal("61.20"), "USD", STAMP),
        PETR: Quote(Decimal("38.1"), "BRL", STAMP),
    }
    prices = PricesResult(quotes, [], [], "http", stale=True, stale_instruments=frozenset({PETR}))
    rates = _rates({"BRL": "5", "EUR": "0.9"}, stale=True, stale_currencies=frozenset({"EUR"}))
    all_stale = _rates({"GBP": "0.8"}, stale=True)

    assert store_prices(db_conn, prices, day=D2, asset_ids=ids) == 1
    assert store_rates(db_conn, rates, day=D2) == 1
    assert store_rates(db_conn, all_stale, day=D2) == 0
    assert set(newest_prices(db_conn, [KO, PETR], on_or_before=D2)) == {KO}
    assert set(newest_rates(db_conn, ["BRL", "EUR", "GBP"], on_or_before=D2)) == {"BRL"}


def test_prices_keep_their_source_currency_and_as_of(
    db_conn: Connection, ids: dict[tuple[str, str], uuid.UUID]
) -> None:
    quotes = {
        KO: Quote(Decimal("61.2000000001"), "USD", STAMP),
        PETR: Quote(Decimal("38.10"), "BRL", STAMP),
    }
    store_prices(
        db_conn,
        PricesResult(quotes, [], [], "http", sources={PETR: "files"}),
        day=D1,
        asset_ids=ids,
    )
    store_prices(
        db_conn,
        PricesResult({KO: Quote(Decimal("70"), "USD", STAMP)}, [], [], "http"),
        day=D3,
        asset_ids=ids,
    )

    found = newest_prices(db_conn, [KO, PETR, ("MDTEST", "NONE")], on_or_before=D2)

    assert found[KO].price == Decimal("61.2000000001") and found[KO].price_date == D1
    assert (found[PETR].currency, found[PETR].source, found[PETR].as_of) == ("BRL", "files", STAMP)
    assert newest_prices(db_conn, [KO], on_or_before=D3)[KO].price == Decimal("70")


def test_an_instrument_without_an_asset_id_is_refused_by_name(
    db_conn: Connection, ids: dict[tuple[str, str], uuid.UUID]
) -> None:
    quotes = {("MDTEST", "GHOST"): Quote(Decimal("1"), "USD", STAMP)}

    with pytest.raises(ValueError, match="no asset id for 1 instrument"):
        store_prices(db_conn, PricesResult(quotes, [], [], "t"), day=D1, asset_ids=ids)


def test_fundamentals_round_trip_with_nulls(
    db_conn: Connection, ids: dict[tuple[str, str], uuid.UUID]
) -> None:
    ko: dict[str, Decimal | None] = {
        m: Decimal(f"-{i}.0000000125") if i % 3 else None for i, m in enumerate(METRICS)
    }
    petr: dict[str, Decimal | None] = {"pe_ratio": Decimal("8.5")}  # others absent: null
    result = FundamentalsResult({KO: ko, PETR: petr}, [], [], "files", as_of=STAMP)

    assert store_fundamentals(db_conn, result, day=D2, asset_ids=ids) == 2
    found = newest_fundamentals(db_conn, [KO, PETR], on_or_before=D3)

    assert found[KO].values == ko and found[KO].fundamentals_date == D2
    assert found[PETR].values == {**dict.fromkeys(METRICS), "pe_ratio": Decimal("8.5")}
    assert found[PETR].source == "files" and found[PETR].as_of == STAMP
    f = asset_fundamentals_table
    assert db_conn.execute(select(func.count()).select_from(f)).scalar_one() >= 2
    assert newest_fundamentals(db_conn, [KO], on_or_before=D1) == {}


def test_lookups_of_many_instruments_are_chunked(
    db_conn: Connection, ids: dict[tuple[str, str], uuid.UUID]
) -> None:
    store_prices(
        db_conn,
        PricesResult({KO: Quote(Decimal("1"), "USD", STAMP)}, [], [], "t"),
        day=D1,
        asset_ids=ids,
    )
    many = [("MDTEST", f"N{i}") for i in range(1200)] + [KO]

    assert set(newest_prices(db_conn, many, on_or_before=D1)) == {KO}
