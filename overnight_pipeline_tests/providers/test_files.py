"""`files:<dir>`: malformed rows are reported with file, line, column and value, and spoil
nothing else; histories resolve to the newest row on or before the day."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.base import ProviderError
from overnight_pipeline.providers.files import FilesProvider

DAY = date(2026, 11, 30)
HEADER = "market,symbol," + ",".join(METRICS)


def _write(directory: Path, name: str, text: str) -> FilesProvider:
    (directory / name).write_text(text)
    return FilesProvider(directory)


def test_a_malformed_price_row_is_reported_and_spoils_nothing_else(tmp_path: Path) -> None:
    provider = _write(
        tmp_path,
        "prices.csv",
        "market,symbol,price,currency,as_of\n"
        "NYSE,KO,61.20,USD,2026-11-27\n"
        "NYSE,PEP,abc,USD,2026-11-27\n"
        "\n"
        "B3,PETR4,38.10,brl,2026-11-27\n"
        "LSE,VOD,-1,GBP,yesterday\n"
        "XETRA,SAP,199.5,EUR,2026-11-27T17:30:00+01:00\n",
    )

    result = provider.fetch_prices(
        [("NYSE", "KO"), ("NYSE", "PEP"), ("B3", "PETR4"), ("LSE", "VOD"), ("XETRA", "SAP")],
        day=DAY,
    )

    assert result.errors == [
        "files: prices.csv line 3, column 'price': must be a decimal string, got 'abc'",
        "files: prices.csv line 5, column 'currency': must be an ISO 4217 code such as 'USD', "
        "got 'brl'",
        "files: prices.csv line 6, column 'price': must be greater than 0, got '-1'",
        "files: prices.csv line 6, column 'as_of': must be an ISO 8601 date or date-time, "
        "got 'yesterday'",
    ]
    assert result.missing == [("NYSE", "PEP"), ("B3", "PETR4"), ("LSE", "VOD")]
    assert result.quotes[("NYSE", "KO")].price == Decimal("61.20")
    sap = result.quotes[("XETRA", "SAP")]
    assert sap.as_of == datetime(2026, 11, 27, 16, 30, tzinfo=UTC)


def test_errors_of_instruments_not_asked_for_are_not_reported(tmp_path: Path) -> None:
    provider = _write(
        tmp_path,
        "prices.csv",
        "market,symbol,price,currency,as_of\nNYSE,KO,61.20,USD,2026-11-27\nNYSE,PEP,x,USD,2026-11-27\n"
        ",,1,USD,2026-11-27\n",
    )

    result = provider.fetch_prices([("NYSE", "KO")], day=DAY)

    assert list(result.quotes) == [("NYSE", "KO")]
    # A row that names no instrument at all is still worth an operator's attention.
    assert result.errors == [
        "files: prices.csv line 4, column 'market': must be a non-empty string, got ''",
        "files: prices.csv line 4, column 'symbol': must be a non-empty string, got ''",
    ]


def test_the_newest_row_on_or_before_the_day_wins(tmp_path: Path) -> None:
    provider = _write(
        tmp_path,
        "prices.csv",
        "market,symbol,price,currency,as_of\n"
        "NYSE,KO,60.00,USD,2026-11-26\n"
        "NYSE,KO,62.00,USD,2026-12-01\n"
        "NYSE,KO,61.00,USD,2026-11-27T21:00:00Z\n"
        "NYSE,KO,59.00,USD,2026-11-20\n"
        "NYSE,PEP,170.00,USD,2026-12-02\n",
    )

    result = provider.fetch_prices([("NYSE", "KO"), ("NYSE", "PEP")], day=DAY)

    assert result.quotes[("NYSE", "KO")].price == Decimal("61.00")
    assert result.missing == [("NYSE", "PEP")]  # only known after the day
    assert provider.fetch_prices([("NYSE", "PEP")], day=date(2026, 12, 2)).missing == []


def test_fundamentals_keep_empty_cells_as_null_and_report_bad_ones(tmp_path: Path) -> None:
    good = ",".join(["1.5"] * len(METRICS))
    with_nulls = ",".join(["" if i % 2 else "2" for i in range(len(METRICS))])
    bad = ",".join(["x" if m == "roe" else "1" for m in METRICS])
    provider = _write(
        tmp_path,
        "fundamentals.csv",
        f"{HEADER}\nNYSE,KO,{good}\nNYSE,PEP,{with_nulls}\nB3,ITSA4,{bad}\nLSE,VOD,1,2\n",
    )

    result = provider.fetch_fundamentals(
        [("NYSE", "KO"), ("NYSE", "PEP"), ("B3", "ITSA4"), ("LSE", "VOD")], day=DAY
    )

    assert result.values[("NYSE", "KO")] == dict.fromkeys(METRICS, Decimal("1.5"))
    pep = result.values[("NYSE", "PEP")]
    assert [pep[m] for m in METRICS[:3]] == [Decimal(2), None, Decimal(2)]
    assert result.missing == [("B3", "ITSA4"), ("LSE", "VOD")]
    assert result.errors[0] == (
        "files: fundamentals.csv line 4, column 'roe': must be a decimal string, got 'x'"
    )
    assert "fundamentals.csv line 5, column 'pb_ratio': is absent" in result.errors[1]


def test_a_header_without_required_columns_fails_the_file(tmp_path: Path) -> None:
    provider = _write(tmp_path, "rates.csv", "from,to,value\nUSD,BRL,5\n")

    with pytest.raises(
        ProviderError, match=r"files: rates.csv line 1: header lacks column\(s\) rate, as_of"
    ):
        provider.fetch_rates(["BRL"], day=DAY)


def test_a_missing_file_fails_with_its_path(tmp_path: Path) -> None:
    provider = FilesProvider(tmp_path / "nowhere")

    with pytest.raises(ProviderError, match=r"files: cannot read .*nowhere/prices\.csv"):
        provider.fetch_prices([("NYSE", "KO")], day=DAY)
    assert provider.health().ok is False
    assert "missing prices.csv, fundamentals.csv, rates.csv" in provider.health().detail


def test_rates_must_be_quoted_against_usd(tmp_path: Path) -> None:
    provider = _write(
        tmp_path,
        "rates.csv",
        "\ufefffrom,to,rate,as_of\n"
        "USD,BRL,5.0123,2026-11-27\n"
        "EUR,GBP,0.86,2026-11-27\n"
        "USD,JPY,0,2026-11-27\n"
        "USD,EUR,0.92,2026-11-26\n"
        "USD,EUR,0.93,2026-11-28\n",
    )

    result = provider.fetch_rates(["BRL", "GBP", "JPY", "EUR"], day=DAY)

    assert result.usd_to == {"BRL": Decimal("5.0123"), "EUR": Decimal("0.93")}
    assert result.missing == ["GBP", "JPY"]
    assert result.rate_date == date(2026, 11, 28)
    assert result.errors == [
        "files: rates.csv line 3, column 'from': rates are quoted against USD "
        "(USD,BRL,5.0123), got 'EUR'",
        "files: rates.csv line 4, column 'rate': must be greater than 0, got '0'",
    ]
    assert result.fx().rate("BRL", "EUR") == Decimal("0.93") / Decimal("5.0123")
