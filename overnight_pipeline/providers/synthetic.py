"""Deterministic synthetic market data: the same (symbol, date) always gives the same values.

Vectorised with numpy: values come from a hash of the key, not from I/O or a random state,
so any date can be replayed and 100k symbols take a fraction of a second.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, date, datetime, time
from decimal import Decimal

import numpy as np
import pandas as pd

from overnight_pipeline.core.markets import Market, load_markets
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    PricesResult,
    Quote,
    RatesResult,
    distinct,
    label,
    wanted_currencies,
)

# Rough units of each currency per USD; the synthetic rates wander a little around them.
USD_RATES: dict[str, float] = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "BRL": 5.05,
    "JPY": 151.0,
    "CHF": 0.88,
    "CAD": 1.37,
    "AUD": 1.52,
    "CNY": 7.2,
    "MXN": 17.1,
}

# Typical share price in the market's currency (log-normal centre).
_PRICE_CENTRE = {"USD": 80.0, "BRL": 25.0, "GBP": 12.0, "JPY": 2500.0, "EUR": 60.0}

# (log-normal centre, spread, share of nulls, decimal places) per metric.
_METRIC_SHAPE: dict[str, tuple[float, float, float, int]] = {
    "dividend_yield": (3.0, 0.6, 0.10, 2),
    "pe_ratio": (16.0, 0.5, 0.08, 2),
    "pb_ratio": (2.2, 0.6, 0.08, 2),
    "market_cap": (2.0e10, 1.5, 0.02, 0),
    "revenue": (5.0e9, 1.4, 0.05, 0),
    "earnings": (5.0e8, 1.5, 0.05, 0),
    "surplus_years": (8.0, 0.6, 0.15, 0),
    "roe": (14.0, 0.5, 0.08, 2),
    "roa": (6.0, 0.6, 0.10, 2),
    "debt_to_equity": (0.9, 0.7, 0.10, 2),
    "current_ratio": (1.5, 0.4, 0.10, 2),
    "gross_margin": (38.0, 0.4, 0.10, 2),
    "net_margin": (11.0, 0.6, 0.10, 2),
    "payout_ratio": (45.0, 0.5, 0.20, 2),
    "ev_ebitda": (10.0, 0.5, 0.12, 2),
}


def key_hash(keys: Sequence[str]) -> np.ndarray:
    """A stable 64-bit hash per key (blake2b), independent of the process and platform."""
    # One joined buffer read as little-endian uint64: faster than int.from_bytes per key
    # (docs/PERFORMANCE.md, "Figures once quoted in the code").
    blake2b = hashlib.blake2b
    digests = b"".join([blake2b(k.encode(), digest_size=8).digest() for k in keys])
    return np.frombuffer(digests, dtype="<u8").astype(np.uint64)


def _uniforms(seeds: np.ndarray, count: int) -> np.ndarray:
    """`count` uniforms in [0, 1) per seed, from a splitmix64 stream (vectorised)."""
    out = np.empty((len(seeds), count), dtype=np.float64)
    state = seeds.astype(np.uint64).copy()
    with np.errstate(over="ignore"):
        for j in range(count):
            state = state + np.uint64(0x9E3779B97F4A7C15)
            z = state
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            z = z ^ (z >> np.uint64(31))
            out[:, j] = (z >> np.uint64(11)).astype(np.float64) / float(1 << 53)
    return out


def _normals(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    normals: np.ndarray = np.sqrt(-2.0 * np.log1p(-u1)) * np.cos(2.0 * np.pi * u2)
    return normals


def _decimal_strings(values: np.ndarray, places: int) -> list[str | None]:
    # Python floats (tolist) format faster than numpy scalars (docs/PERFORMANCE.md,
    # "Market-data providers"); NaN is the only v != v.
    spec = f".{places}f"
    return [None if v != v else format(v, spec) for v in values.tolist()]


def fundamentals_frame(markets: Sequence[str], symbols: Sequence[str], day: date) -> pd.DataFrame:
    """Fundamentals per (market, symbol) on `day`: a stable company profile plus a small
    quarterly drift; some values are null. Metric columns hold decimal strings or None."""
    base = key_hash([f"{m}:{s}" for m, s in zip(markets, symbols, strict=True)])
    quarter = (day.year * 4 + (day.month - 1) // 3) & 0xFFFF
    drift_seed = base ^ np.uint64(quarter * 0x100000001B3)
    u = _uniforms(base, 3 * len(METRICS))
    d = _uniforms(drift_seed, len(METRICS))
    frame = pd.DataFrame({"market": list(markets), "symbol": list(symbols)})
    for i, metric in enumerate(METRICS):
        centre, spread, nulls, places = _METRIC_SHAPE[metric]
        z = _normals(u[:, 3 * i], u[:, 3 * i + 1])
        values = centre * np.exp(spread * z + 0.05 * (d[:, i] - 0.5))
        if metric in ("earnings", "net_margin", "roe", "roa"):
            values = np.where(u[:, 3 * i + 2] < 0.12, -values / 4, values)  # some loss-makers
        missing = (u[:, 3 * i + 2] * 7.3) % 1.0 < nulls
        values = np.where(missing, np.nan, values)
        # object dtype keeps None as None (pandas 3 would make a str column with NaN).
        frame[metric] = pd.Series(_decimal_strings(values, places), dtype=object)
    return frame


def prices_frame(
    markets: Sequence[str], symbols: Sequence[str], currencies: Sequence[str], day: date
) -> pd.DataFrame:
    """A close price per (market, symbol) on `day` in the asset's currency (decimal strings)."""
    base = key_hash([f"{m}:{s}" for m, s in zip(markets, symbols, strict=True)])
    day_seed = base ^ np.uint64(day.toordinal() * 0x9E3779B1)
    u = _uniforms(base, 2)
    w = _uniforms(day_seed, 2)
    centre = np.array([_PRICE_CENTRE.get(c, 50.0) for c in currencies])
    level = centre * np.exp(0.9 * _normals(u[:, 0], u[:, 1]))
    # A deterministic daily wiggle of about ±2 % around the company's level.
    price = level * np.exp(0.02 * _normals(w[:, 0], w[:, 1]))
    places = np.array([0 if c == "JPY" else 2 for c in currencies])
    price = np.maximum(price, np.where(places == 0, 1.0, 0.01))
    # Python floats (tolist) format several times faster than numpy scalars; same digits.
    specs = [".0f" if n == 0 else ".2f" for n in places.tolist()]
    strings = [format(p, spec) for p, spec in zip(price.tolist(), specs, strict=True)]
    return pd.DataFrame(
        {
            "market": list(markets),
            "symbol": list(symbols),
            "currency": list(currencies),
            "price": strings,
        }
    )


def usd_rates(currencies: Sequence[str], day: date) -> dict[str, Decimal]:
    """USD-quoted rates on `day` (1 USD = rate units), within ±1 % of a fixed centre."""
    wanted = sorted({c for c in currencies if c != "USD"})
    unknown = [c for c in wanted if c not in USD_RATES]
    if unknown:
        raise KeyError(f"synthetic provider has no rate for {', '.join(unknown)}")
    seeds = key_hash([f"{c}:{day.isoformat()}" for c in wanted])
    u = _uniforms(seeds, 1)[:, 0] if wanted else np.array([])
    return {
        c: Decimal(f"{USD_RATES[c] * (1 + 0.02 * (x - 0.5)):.6f}")
        for c, x in zip(wanted, u, strict=True)
    }


class SyntheticProvider:
    """The default provider: values are a pure function of (market, symbol, day); no I/O.

    An instrument of a market that is not configured is reported missing (its currency,
    hence its price scale, is unknown); so is a currency without a synthetic centre.
    """

    def __init__(self, markets: Mapping[str, Market] | None = None, *, name: str = "synthetic"):
        self.name = name
        self._currency = {code: m.currency for code, m in (markets or load_markets()).items()}

    def fetch_rates(self, currencies: Collection[str], *, day: date) -> RatesResult:
        wanted = wanted_currencies(currencies)
        known = [c for c in wanted if c in USD_RATES]
        return RatesResult(
            usd_to=usd_rates(known, day),
            source=self.name,
            # A pure function of the day like the prices: two runs of one date are the
            # same calculation whatever the hour they fetch.
            as_of=datetime.combine(day, time(0), UTC),
            rate_date=day,
            missing=[c for c in wanted if c not in USD_RATES],
        )

    def _split(self, instruments: Sequence[Instrument]) -> tuple[list[Instrument], list[str]]:
        known, errors = [], []
        for inst in instruments:
            if inst[0] in self._currency:
                known.append(inst)
            else:
                errors.append(f"{self.name}: {label(inst)}: unknown market {inst[0]!r}")
        return known, errors

    def fetch_prices(self, instruments: Sequence[Instrument], *, day: date) -> PricesResult:
        wanted = distinct(instruments)
        known, errors = self._split(wanted)
        frame = prices_frame(
            [m for m, _ in known], [s for _, s in known], [self._currency[m] for m, _ in known], day
        )
        stamp = datetime.combine(day, time(0), UTC)
        quotes = {
            inst: Quote(Decimal(price), currency, stamp)
            for inst, price, currency in zip(
                known, frame["price"].tolist(), frame["currency"].tolist(), strict=True
            )
        }
        return PricesResult.of(wanted, quotes, errors=errors, source=self.name)

    def fetch_fundamentals(
        self, instruments: Sequence[Instrument], *, day: date
    ) -> FundamentalsResult:
        wanted = distinct(instruments)
        known, errors = self._split(wanted)
        frame = fundamentals_frame([m for m, _ in known], [s for _, s in known], day)
        columns = [
            [None if v is None else Decimal(v) for v in frame[metric].tolist()]
            for metric in METRICS
        ]
        values = {
            inst: dict(zip(METRICS, row, strict=True))
            for inst, row in zip(known, zip(*columns, strict=True), strict=True)
        }
        return FundamentalsResult.of(wanted, values, errors=errors, source=self.name)

    def health(self) -> Health:
        return Health(ok=True, detail="synthetic data needs nothing outside the process")
