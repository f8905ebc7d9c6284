"""Benchmark: scoring + recommendations, batch path vs looping the one-user path (issue 3).

    .venv/bin/python bench/core_bench.py [--users 100000] [--batch 1000] [--loop-users 10000]

Synthetic users like `overnight seed` makes (30 holdings, 3-6 classes, 5-15 rules each) are
generated in memory batch by batch (generation is not timed), then scored and recommended
on one core. The one-user path runs over the first `--loop-users` users and is compared per
user. The result is recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal

import numpy as np
import pandas as pd

from overnight_pipeline.core.batch import Batch, FundamentalsTable, run_batch
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.recommendations import ClassSpec, HoldingInput, recommend
from overnight_pipeline.core.scoring import Rule, score_holdings
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.synthetic import USD_RATES, fundamentals_frame, prices_frame
from overnight_pipeline.seed import BASE_CURRENCIES, CLASS_NAMES, POINTS, THRESHOLDS, universe

DAY = date(2026, 11, 30)


def _dec(values) -> list[Decimal | None]:
    return [None if v is None else Decimal(v) for v in values]


def market_data():
    assets = universe()
    markets = [a[0] for a in assets]
    symbols = [a[1] for a in assets]
    ids = [f"{m}:{s}" for m, s in zip(markets, symbols, strict=True)]
    fund = fundamentals_frame(markets, symbols, DAY)
    fundamentals = FundamentalsTable.of(
        pd.DataFrame(
            {m: pd.Series(_dec(fund[m].tolist()), dtype=object) for m in METRICS}
        ).set_axis(pd.Index(ids, name="asset_id"))
    )
    prices = prices_frame(markets, symbols, [a[2] for a in assets], DAY)
    price = dict(zip(ids, _dec(prices["price"].tolist()), strict=True))
    currency = {i: a[2] for i, a in zip(ids, assets, strict=True)}
    symbol = dict(zip(ids, symbols, strict=True))
    by_market: dict[str, list[str]] = {}
    for i, m in zip(ids, markets, strict=True):
        by_market.setdefault(m, []).append(i)
    fx = FxRates(
        usd_to={c: Decimal(f"{r:.6f}") for c, r in USD_RATES.items() if c != "USD"},
        as_of=datetime(2026, 11, 30, 6, tzinfo=UTC),
    )
    return fundamentals, price, currency, symbol, by_market, fx


def batches(
    n_users: int, size: int, holdings: int, data, seed: int = 7
) -> Iterator[tuple[Batch, list]]:
    """Batches of synthetic users: the frames and, for the loop, each user's objects."""
    fundamentals, price, currency, symbol, by_market, _ = data
    rng = np.random.default_rng(seed)
    market_codes = sorted(by_market)
    quantities = [Decimal(q) for q in range(1, 400)] + [Decimal(f"{q}.25") for q in range(1, 50)]
    as_of = datetime(2026, 11, 30, 5, tzinfo=UTC)
    for start in range(0, n_users, size):
        users, classes, rows, rules, objects = [], [], [], [], []
        for i in range(start, min(start + size, n_users)):
            uid = f"u{i:07d}"
            home = market_codes[rng.integers(len(market_codes))]
            base = (
                currency[by_market[home][0]]
                if rng.random() < 0.8
                else BASE_CURRENCIES[rng.integers(len(BASE_CURRENCIES))]
            )
            step = 1000 if base == "JPY" else 10
            raw = int(rng.integers(2, 101)) * 50 * USD_RATES[base]
            contribution = (
                Decimal(max(step, round(raw / step) * step)) if rng.random() < 0.9 else None
            )
            users.append((uid, base, contribution, 1))
            k = int(rng.integers(3, 7))
            names = [CLASS_NAMES[j] for j in rng.choice(len(CLASS_NAMES), k, replace=False)]
            mids = rng.dirichlet(np.full(k, 2.0)) * 100
            spread = rng.uniform(5, 15, k)
            specs = []
            for j, name in enumerate(names):
                lo = Decimal(int(max(0, mids[j] - spread[j])))
                hi = Decimal(int(min(100, np.ceil(mids[j] + spread[j]))))
                max_assets = int(rng.integers(3, 11)) if rng.random() < 0.3 else None
                min_alloc = Decimal(int(rng.integers(1, 11)) * 10) if rng.random() < 0.3 else None
                specs.append(ClassSpec(name, lo, hi, max_assets, min_alloc))
                classes.append((uid, name, lo, hi, max_assets, min_alloc))
            second = market_codes[rng.integers(len(market_codes))]
            n2 = int(holdings * rng.uniform(0.1, 0.4)) if rng.random() < 0.3 else 0
            # str(): asset ids are plain str as in the database, not numpy.str_.
            picks = [str(a) for a in rng.choice(by_market[home], holdings - n2, replace=False)]
            pool = [a for a in by_market[second] if a not in set(picks)]
            picks += [str(a) for a in rng.choice(pool, n2, replace=False)] if n2 else []
            hs = []
            for a in picks:
                h = HoldingInput(
                    a,
                    symbol[a],
                    names[rng.integers(k)],
                    quantities[rng.integers(len(quantities))],
                    currency[a],
                    price[a] if rng.random() > 0.01 else None,
                    as_of,
                )
                hs.append(h)
                rows.append((uid, *h))
            rs = []
            for pos in range(int(rng.integers(5, 16))):
                metric = METRICS[rng.integers(len(METRICS))]
                op, v, v2 = THRESHOLDS[metric][rng.integers(len(THRESHOLDS[metric]))]
                r = Rule(
                    id=f"r{pos + 1}",
                    asset_class=names[rng.integers(k)],
                    metric=metric,
                    operator=op,
                    value=v or None,
                    value2=v2,
                    points=int(POINTS[rng.integers(len(POINTS))]),
                )
                rs.append(r)
                rules.append(
                    (uid, r.id, r.asset_class, r.metric, r.operator, r.value, r.value2, r.points)
                )
            objects.append((uid, base, contribution, specs, hs, rs))

        def frame(data, columns):
            return pd.DataFrame(data, columns=columns, dtype=object)

        yield (
            Batch(
                users=frame(
                    users, ["user_id", "base_currency", "contribution", "criteria_version"]
                ),
                classes=frame(
                    classes,
                    [
                        "user_id",
                        "name",
                        "target_min",
                        "target_max",
                        "max_assets",
                        "min_allocation_value",
                    ],
                ),
                holdings=frame(
                    rows,
                    [
                        "user_id",
                        "asset_id",
                        "symbol",
                        "asset_class",
                        "quantity",
                        "currency",
                        "price",
                        "price_as_of",
                    ],
                ),
                rules=frame(
                    rules,
                    [
                        "user_id",
                        "id",
                        "asset_class",
                        "metric",
                        "operator",
                        "value",
                        "value2",
                        "points",
                    ],
                ),
                fundamentals=fundamentals,
            ),
            objects,
        )


def loop_one_user(objects, fundamentals: dict, fx: FxRates) -> int:
    done = 0
    for _uid, base, contribution, specs, hs, rs in objects:
        scores = score_holdings([(h.asset_id, h.asset_class) for h in hs], rs, fundamentals)
        recommend(
            base_currency=base,
            contribution=contribution,
            classes=specs,
            holdings=hs,
            scores=scores,
            fx=fx,
            criteria_version=1,
        )
        done += 1
    return done


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1_000)
    parser.add_argument("--holdings", type=int, default=30)
    parser.add_argument("--loop-users", type=int, default=10_000)
    args = parser.parse_args()
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core

    data = market_data()
    fundamentals, fx = data[0], data[5]
    fund_dicts = {
        a: dict(zip(METRICS, row, strict=True))
        for a, row in zip(fundamentals.index, fundamentals.exact, strict=False)
    }
    batch_s = loop_s = 0.0
    looped = users = holdings = recs = failed = 0
    for batch, objects in batches(args.users, args.batch, args.holdings, data):
        started = time.perf_counter()
        result = run_batch(batch, fx)
        batch_s += time.perf_counter() - started
        users += len(batch.users)
        holdings += len(batch.holdings)
        recs += sum(len(r.recommendations) for r in result.recommendations.values())
        failed += len(result.failures)
        if looped < args.loop_users:
            started = time.perf_counter()
            looped += loop_one_user(objects, fund_dicts, fx)
            loop_s += time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    per_batch = batch_s / users * 1e6
    per_loop = loop_s / max(looped, 1) * 1e6
    print(
        f"batch path: {users:,} users, {holdings:,} holdings in batches of {args.batch:,}:"
        f" {batch_s:.1f} s ({users / batch_s:,.0f} users/s, {per_batch:.0f} us/user),"
        f" {recs:,} recommendations, {failed} failed users"
    )
    print(
        f"one-user loop: {looped:,} users: {loop_s:.1f} s ({per_loop:.0f} us/user;"
        f" {per_loop * users / 1e6:.0f} s extrapolated to {users:,})"
    )
    print(f"speed-up: {per_loop / per_batch:.1f}x; peak RSS {peak_mb:,.0f} MB (one core)")


if __name__ == "__main__":
    main()
