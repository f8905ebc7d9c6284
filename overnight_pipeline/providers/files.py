"""`MARKET_DATA=files:<dir>`: CSV files in the layout of BEHAVIOUR §10.

`prices.csv` (`market,symbol,price,currency,as_of`), `fundamentals.csv` (`market,symbol,`
one column per metric, empty = null, optional `as_of`) and `rates.csv` (`from,to,rate,as_of`,
`from` is always USD). A file may hold a history: for each item the newest row whose
`as_of` falls on or before the requested day wins. A malformed row is reported with file,
line, column and value and leaves every other row usable.
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, TypeVar

from overnight_pipeline.core.money import QUOTE_BASE
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers import parsing
from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    PricesResult,
    ProviderError,
    Quote,
    RatesResult,
    distinct,
    utcnow,
    wanted_currencies,
)

PRICES_FILE = "prices.csv"
FUNDAMENTALS_FILE = "fundamentals.csv"
RATES_FILE = "rates.csv"
PRICES_COLUMNS = ("market", "symbol", "price", "currency", "as_of")
FUNDAMENTALS_COLUMNS = ("market", "symbol", *METRICS)
RATES_COLUMNS = ("from", "to", "rate", "as_of")

T = TypeVar("T")
_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class _Row:
    line: int
    cells: dict[str, str]


class _RowErrors(Exception):
    def __init__(self, messages: list[str]) -> None:
        self.messages = messages


class FilesProvider:
    """Reads the CSV files on every call, so an operator can replace them between runs."""

    def __init__(self, directory: Path | str, *, name: str = "files") -> None:
        self.directory = Path(directory)
        self.name = name

    # -- reading ---------------------------------------------------------------------------

    def _rows(self, filename: str, required: Sequence[str]) -> Iterator[_Row]:
        path = self.directory / filename
        try:
            handle = path.open(newline="", encoding="utf-8-sig")
        except OSError as exc:
            raise ProviderError(self.name, f"cannot read {path}: {exc.strerror}") from None
        with handle:
            reader = csv.reader(handle)
            header = [h.strip() for h in next(reader, [])]
            absent = [c for c in required if c not in header]
            if absent:
                raise ProviderError(
                    self.name,
                    f"{filename} line 1: header lacks column(s) {', '.join(absent)}",
                    value=",".join(header),
                )
            for record in reader:
                if not any(cell.strip() for cell in record):
                    continue  # blank lines are not data
                cells = dict(zip(header, record, strict=False))
                yield _Row(reader.line_num, {k: v.strip() for k, v in cells.items()})

    def _cell(
        self, filename: str, row: _Row, column: str, parse: Callable[[Any], T], errors: list[str]
    ) -> T | None:
        raw = row.cells.get(column)
        try:
            if raw is None:
                raise ValueError("is absent (the row has fewer cells than the header)")
            return parse(raw)
        except ValueError as exc:
            errors.append(f"{self.name}: {filename} line {row.line}, column {column!r}: {exc}")
            return None

    def _newest(
        self,
        filename: str,
        required: Sequence[str],
        key_of: Callable[[_Row, list[str]], Any],
        parse: Callable[[_Row, list[str]], tuple[datetime | None, T] | None],
        wanted: Collection[Any],
        day: date,
    ) -> tuple[dict[Any, tuple[datetime | None, T]], list[str]]:
        """Per wanted key, the valid row with the newest `as_of` on or before `day`."""
        chosen: dict[Any, tuple[datetime | None, T]] = {}
        errors: list[str] = []
        for row in self._rows(filename, required):
            row_errors: list[str] = []
            key = key_of(row, row_errors)
            if key is None:
                errors.extend(row_errors)
                continue
            if key not in wanted:
                continue
            parsed = parse(row, row_errors)
            if row_errors or parsed is None:
                errors.extend(row_errors)
                continue
            stamp, value = parsed
            if stamp is not None and stamp.date() > day:
                continue
            previous = chosen.get(key)
            # Newest as_of wins; without as_of (or on a tie) the later row wins.
            if previous is None or (previous[0] or _EPOCH) <= (stamp or _EPOCH):
                chosen[key] = (stamp, value)
        return chosen, errors

    def _instrument(self, filename: str) -> Callable[[_Row, list[str]], Instrument | None]:
        def key_of(row: _Row, errors: list[str]) -> Instrument | None:
            market = self._cell(filename, row, "market", parsing.text, errors)
            symbol = self._cell(filename, row, "symbol", parsing.text, errors)
            return None if market is None or symbol is None else (market, symbol)

        return key_of

    # -- the interface ---------------------------------------------------------------------

    def fetch_rates(self, currencies: Collection[str], *, day: date) -> RatesResult:
        wanted = set(wanted_currencies(currencies))

        def key_of(row: _Row, errors: list[str]) -> str | None:
            base = self._cell(RATES_FILE, row, "from", parsing.currency, errors)
            quote = self._cell(RATES_FILE, row, "to", parsing.currency, errors)
            if base is not None and base != QUOTE_BASE:
                errors.append(
                    f"{self.name}: {RATES_FILE} line {row.line}, column 'from': rates are "
                    f"quoted against USD (USD,BRL,5.0123), got {base!r}"
                )
                return None
            return quote

        def parse(row: _Row, errors: list[str]) -> tuple[datetime | None, Decimal] | None:
            rate = self._cell(RATES_FILE, row, "rate", parsing.positive_decimal, errors)
            stamp = self._cell(RATES_FILE, row, "as_of", parsing.timestamp, errors)
            return None if rate is None or stamp is None else (stamp, rate)

        chosen, errors = self._newest(RATES_FILE, RATES_COLUMNS, key_of, parse, wanted, day)
        dates = [stamp.date() for stamp, _ in chosen.values() if stamp is not None]
        return RatesResult(
            usd_to={c: rate for c, (_, rate) in sorted(chosen.items())},
            source=self.name,
            as_of=utcnow(),
            rate_date=max(dates) if dates else None,
            missing=sorted(wanted - chosen.keys()),
            errors=errors,
        )

    def fetch_prices(self, instruments: Sequence[Instrument], *, day: date) -> PricesResult:
        wanted = distinct(instruments)

        def parse(row: _Row, errors: list[str]) -> tuple[datetime | None, Quote] | None:
            price = self._cell(PRICES_FILE, row, "price", parsing.positive_decimal, errors)
            currency = self._cell(PRICES_FILE, row, "currency", parsing.currency, errors)
            stamp = self._cell(PRICES_FILE, row, "as_of", parsing.timestamp, errors)
            if price is None or currency is None or stamp is None:
                return None
            return stamp, Quote(price, currency, stamp)

        chosen, errors = self._newest(
            PRICES_FILE, PRICES_COLUMNS, self._instrument(PRICES_FILE), parse, set(wanted), day
        )
        quotes = {inst: quote for inst, (_, quote) in chosen.items()}
        return PricesResult.of(wanted, quotes, errors=errors, source=self.name)

    def fetch_fundamentals(
        self, instruments: Sequence[Instrument], *, day: date
    ) -> FundamentalsResult:
        wanted = distinct(instruments)

        def parse(
            row: _Row, errors: list[str]
        ) -> tuple[datetime | None, dict[str, Decimal | None]] | None:
            values = {
                metric: self._cell(FUNDAMENTALS_FILE, row, metric, parsing.optional_decimal, errors)
                for metric in METRICS
            }
            stamp = None
            if row.cells.get("as_of"):
                stamp = self._cell(FUNDAMENTALS_FILE, row, "as_of", parsing.timestamp, errors)
            return None if errors else (stamp, values)

        chosen, errors = self._newest(
            FUNDAMENTALS_FILE,
            FUNDAMENTALS_COLUMNS,
            self._instrument(FUNDAMENTALS_FILE),
            parse,
            set(wanted),
            day,
        )
        values = {inst: metrics for inst, (_, metrics) in chosen.items()}
        return FundamentalsResult.of(wanted, values, errors=errors, source=self.name)

    def health(self) -> Health:
        absent = [
            name
            for name in (PRICES_FILE, FUNDAMENTALS_FILE, RATES_FILE)
            if not (self.directory / name).is_file()
        ]
        if absent:
            return Health(False, f"{self.directory}: missing {', '.join(absent)}")
        return Health(True, f"{self.directory}: {PRICES_FILE}, {FUNDAMENTALS_FILE}, {RATES_FILE}")
