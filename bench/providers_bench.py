"""Benchmark: market-data providers.

    .venv/bin/python bench/providers_bench.py [--symbols 5000] [--batch 50] [--rate 20]

1. HTTP: fetch `--symbols` distinct prices from the local test server (a real uvicorn on a
   loopback port) in batches of `--batch` under a `--rate` requests/s limit, then the same
   with the limit lifted, to show the limit and not the code is the bottleneck; the server
   counts requests and the busiest one-second window.
2. Synthetic: prices, fundamentals and rates for `--synthetic` (100,000) symbols.

Prints the figures; the result is recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

from overnight_pipeline.providers.http import HttpProvider
from overnight_pipeline.providers.resilience import HttpOptions
from overnight_pipeline.providers.synthetic import USD_RATES, SyntheticProvider
from overnight_pipeline_tests.support.fake_market import running, synthetic_dataset

DAY = date(2026, 11, 30)
MARKETS = ("NYSE", "NASDAQ", "B3", "LSE", "TSE", "XETRA")


def universe(n: int) -> list[tuple[str, str]]:
    return [(MARKETS[i % len(MARKETS)], f"S{i:06d}") for i in range(n)]


def bench_http(symbols: int, batch: int, rate: float, concurrency: int) -> None:
    instruments = universe(symbols)
    dataset = synthetic_dataset(instruments, ["BRL", "EUR"], DAY)
    with running(dataset) as server:
        for label, limit in ((f"{rate:g} req/s limit", rate), ("no limit (10,000 req/s)", 1e4)):
            server.reset()
            provider = HttpProvider(
                server.rates_url,
                server.prices_url,
                batch_size=batch,
                options=HttpOptions(rate_limit=limit, concurrency=concurrency),
            )
            started = time.perf_counter()
            result = provider.fetch_prices(instruments + instruments[:100], day=DAY)
            elapsed = time.perf_counter() - started
            seen = sorted(s.at for s in server.requests("/market/prices"))
            busiest = max(sum(1 for t in seen if s <= t < s + 1.0) for s in seen)
            assert len(result.quotes) == symbols and not result.errors, result.errors[:3]
            print(
                f"http prices, {label}: {symbols:,} symbols in {len(seen)} requests of "
                f"<= {batch}: {elapsed:.2f} s; busiest second at the server: {busiest} requests"
            )


def bench_synthetic(symbols: int) -> None:
    provider = SyntheticProvider()
    instruments = universe(symbols)
    provider.fetch_prices(instruments[:1000], day=DAY)  # warm numpy up
    for name, call in (
        ("prices", lambda: provider.fetch_prices(instruments, day=DAY)),
        ("fundamentals (15 metrics)", lambda: provider.fetch_fundamentals(instruments, day=DAY)),
        ("rates", lambda: provider.fetch_rates(list(USD_RATES), day=DAY)),
    ):
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            call()
            timings.append(time.perf_counter() - started)
        what = f"{len(USD_RATES)} currencies" if name == "rates" else f"{symbols:,} symbols"
        print(f"synthetic {name}: {what}, best of 3: {min(timings):.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--symbols", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--synthetic", type=int, default=100_000)
    args = parser.parse_args()
    bench_http(args.symbols, args.batch, args.rate, args.concurrency)
    bench_synthetic(args.synthetic)


if __name__ == "__main__":
    main()
