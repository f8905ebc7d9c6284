"""`overnight seed`: deterministic synthetic planners, written in bulk.

The asset universe does not depend on the seed (every seed shares it); users, their classes,
holdings and criteria are a pure function of the seed. Writes are set-based (COPY on
PostgreSQL) in chunks of users, so memory is bounded by the chunk.
"""

from __future__ import annotations

import string
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import UTC, date, datetime

import numpy as np
from sqlalchemy import Connection

from overnight_pipeline.core.markets import DEFAULT_MARKETS, Market
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers.synthetic import USD_RATES, fundamentals_frame
from overnight_pipeline.storage.bulk import foreign_keys_deferred_to_end
from overnight_pipeline.storage.seeding import (
    BULK_TABLES,
    SeededUsers,
    delete_users,
    replace_fundamentals,
    store_universe,
    write_users,
)

UNIVERSE_SEED = 20_261_130
CLASS_NAMES = (
    "Domestic Stocks",
    "International Stocks",
    "Dividend Payers",
    "REITs",
    "Small Caps",
    "Growth",
    "Value",
    "Bonds ETFs",
    "Emerging Markets",
    "Tech",
)
BASE_CURRENCIES = ("USD", "EUR", "GBP", "BRL", "JPY")
# (operator, value, value2) choices per metric, in the metric's usual unit.
THRESHOLDS: dict[str, tuple[tuple[str, str, str | None], ...]] = {
    "dividend_yield": (("gt", "3", None), ("gte", "4", None), ("between", "2", "8")),
    "pe_ratio": (("lt", "15", None), ("lte", "20", None), ("between", "5", "25")),
    "pb_ratio": (("lt", "1.5", None), ("lte", "3", None)),
    "market_cap": (("gt", "1000000000", None), ("gte", "10000000000", None)),
    "revenue": (("gt", "1000000000", None),),
    "earnings": (("gt", "0", None), ("exists", "", None)),
    "surplus_years": (("gte", "5", None), ("gte", "10", None)),
    "roe": (("gt", "10", None), ("gte", "15", None)),
    "roa": (("gt", "5", None),),
    "debt_to_equity": (("lt", "1", None), ("lte", "2", None)),
    "current_ratio": (("gt", "1", None), ("gte", "1.5", None)),
    "gross_margin": (("gt", "30", None), ("gte", "40", None)),
    "net_margin": (("gt", "10", None), ("lt", "0", None)),
    "payout_ratio": (
        (
            "between",
            "30",
            "80",
        ),
        ("lt", "90", None),
    ),
    "ev_ebitda": (("lt", "10", None), ("lte", "12", None)),
}
# Above this many users the per-row foreign-key triggers dominate: check them once at the end.
BULK_THRESHOLD = 20_000
POINTS = np.array([-20, -10, -5, 5, 10, 10, 15, 20, 20, 25, 30, 50])


def universe(
    markets: tuple[Market, ...] = DEFAULT_MARKETS, per_market: int = 300
) -> list[tuple[str, str, str, str]]:
    """(market, symbol, currency, name) of the shared asset universe, ticker-shaped per market."""
    rng = np.random.default_rng(UNIVERSE_SEED)
    letters = np.array(list(string.ascii_uppercase))
    rows = []
    for market in markets:
        seen: set[str] = set()
        while len(seen) < per_market:
            if market.code == "TSE":
                symbol = str(int(rng.integers(1300, 9999)))
            elif market.code == "B3":
                symbol = "".join(rng.choice(letters, 4)) + str(rng.choice([3, 4, 11]))
            else:
                symbol = "".join(rng.choice(letters, int(rng.integers(3, 5))))
            seen.add(symbol)
        rows.extend((market.code, s, market.currency, f"{s} ({market.code})") for s in sorted(seen))
    return rows


@dataclass(frozen=True)
class SeedReport:
    users: int
    holdings: int
    asset_classes: int
    criteria_rules: int
    assets: int


def _uuids(rng: np.random.Generator, n: int) -> list[uuid.UUID]:
    raw = rng.bytes(16 * n)
    return [uuid.UUID(bytes=raw[i : i + 16], version=4) for i in range(0, 16 * n, 16)]


def seed(
    conn: Connection,
    *,
    users: int,
    seed: int = 0,
    as_of: date | None = None,
    markets: tuple[Market, ...] = DEFAULT_MARKETS,
    assets_per_market: int = 300,
    chunk: int = 10_000,
    progress: Callable[[int, int], None] | None = None,
) -> SeedReport:
    """Write `users` synthetic users generated from `seed`; re-seeding replaces them."""
    as_of = as_of or datetime.now(UTC).date()
    now = datetime.now(UTC)
    assets = universe(markets, assets_per_market)
    ids = store_universe(
        conn,
        [
            {
                "id": uuid.uuid5(uuid.NAMESPACE_URL, f"asset:{m}:{s}"),
                "market": m,
                "symbol": s,
                "currency": c,
                "name": n,
            }
            for m, s, c, n in assets
        ],
    )
    _seed_fundamentals(conn, assets, ids, as_of, now)

    by_market: dict[str, np.ndarray] = {}
    for m in markets:
        by_market[m.code] = np.array(
            [ids[(mm, s)] for mm, s, _, _ in assets if mm == m.code], dtype=object
        )

    report = SeedReport(0, 0, 0, 0, len(assets))
    rng = np.random.default_rng(seed)
    # Ids come from their own stream so that all are known before writing: re-seeding first
    # deletes those users (cascading to their rows) and never duplicates them.
    all_ids = _uuids(np.random.default_rng([seed, 1]), users)
    delete_users(conn, all_ids, chunk=chunk)
    done = 0
    bulk = (
        foreign_keys_deferred_to_end(conn, BULK_TABLES)
        if users >= BULK_THRESHOLD
        else nullcontext()
    )
    with bulk:
        for start in range(0, users, chunk):
            size = min(chunk, users - start)
            part = _write_chunk(conn, rng, all_ids[start : start + size], markets, by_market, now)
            report = SeedReport(
                report.users + part.users,
                report.holdings + part.holdings,
                report.asset_classes + part.asset_classes,
                report.criteria_rules + part.criteria_rules,
                report.assets,
            )
            done += size
            if progress:
                progress(done, users)
    return report


def _seed_fundamentals(conn: Connection, assets, ids, as_of: date, now: datetime) -> None:
    frame = fundamentals_frame([a[0] for a in assets], [a[1] for a in assets], as_of)
    rows = (
        (ids[(r[0], r[1])], as_of, *r[2:], "synthetic", now)
        for r in frame.itertuples(index=False, name=None)
    )
    replace_fundamentals(conn, rows, day=as_of, asset_ids=list(ids.values()))


def _write_chunk(conn, rng, user_ids, markets, by_market, now) -> SeedReport:
    size = len(user_ids)
    market_codes = [m.code for m in markets]
    currency_of = {m.code: m.currency for m in markets}
    primary = rng.integers(0, len(markets), size)
    # A second market needs two markets (the draws are the same as ever when there are).
    has_second = (rng.random(size) < 0.3) & (len(markets) > 1)
    second = (primary + rng.integers(1, max(len(markets), 2), size)) % len(markets)
    local_ccy = rng.random(size) < 0.8
    other_ccy = rng.integers(0, len(BASE_CURRENCIES), size)
    n_holdings = rng.integers(10, 51, size)
    n_classes = rng.integers(3, 7, size)
    n_rules = rng.integers(5, 16, size)
    contribution_set = rng.random(size) < 0.9
    contribution_usd = rng.integers(2, 101, size) * 50
    active = rng.random(size) < 0.97

    rows = SeededUsers()
    # Child ids derive from the user id, so they are as deterministic and unique as it is.
    version_ids = [uuid.uuid5(uid, "criteria:1") for uid in user_ids]
    # Each user's draws, in this order: classes, holdings, rules (the stream is the seed's).
    for i, user_id in enumerate(user_ids):
        home = market_codes[primary[i]]
        base = currency_of[home] if local_ccy[i] else BASE_CURRENCIES[other_ccy[i]]
        contribution = None
        if contribution_set[i]:
            contribution = _round_amount(contribution_usd[i] * USD_RATES.get(base, 1.0), base)
        rows.users.append((user_id, base, contribution, bool(active[i]), now, now))
        names = rng.choice(len(CLASS_NAMES), int(n_classes[i]), replace=False)
        class_ids = _add_classes(rows, rng, user_id, names, base)
        second_market = market_codes[second[i]] if has_second[i] else None
        n = int(n_holdings[i])
        picks = _picks(rng, by_market, home, second_market, n)
        _add_holdings(rows, rng, user_id, class_ids, picks)
        rows.versions.append((version_ids[i], user_id, 1, now))
        _add_rules(rows, rng, version_ids[i], names, int(n_rules[i]))

    write_users(conn, rows)
    return SeedReport(len(rows.users), len(rows.holdings), len(rows.classes), len(rows.rules), 0)


def _add_classes(
    rows: SeededUsers, rng: np.random.Generator, user_id: uuid.UUID, names: np.ndarray, base: str
) -> list[uuid.UUID]:
    """The user's asset classes `names` (indexes of CLASS_NAMES): bands around a Dirichlet
    split of 100 %; returns their ids."""
    k = len(names)
    mids = rng.dirichlet(np.full(k, 2.0)) * 100
    spread = rng.uniform(5, 15, k)
    los = np.floor(np.maximum(0, mids - spread)).astype(int)
    his = np.ceil(np.minimum(100, mids + spread)).astype(int)
    user_class_ids = [uuid.uuid5(user_id, f"class:{j}") for j in range(k)]
    for j in range(k):
        max_assets = int(rng.integers(3, 11)) if rng.random() < 0.3 else None
        min_alloc = (
            _round_amount(float(rng.integers(1, 11)) * 10 * USD_RATES.get(base, 1.0), base)
            if rng.random() < 0.3
            else None
        )
        rows.classes.append(
            (
                user_class_ids[j],
                user_id,
                CLASS_NAMES[names[j]],
                j,
                str(los[j]),
                str(his[j]),
                max_assets,
                min_alloc,
            )
        )
    return user_class_ids


def _picks(
    rng: np.random.Generator,
    by_market: dict[str, np.ndarray],
    home: str,
    second_market: str | None,
    n: int,
) -> list[uuid.UUID]:
    """`n` distinct assets of the home market, 10-40 % of them from `second_market` if any."""
    n2 = round(n * rng.uniform(0.1, 0.4)) if second_market is not None else 0
    picks = list(rng.choice(by_market[home], n - n2, replace=False))
    if n2:
        picks += list(rng.choice(by_market[second_market], n2, replace=False))
    return picks


def _add_holdings(
    rows: SeededUsers,
    rng: np.random.Generator,
    user_id: uuid.UUID,
    class_ids: list[uuid.UUID],
    picks: list[uuid.UUID],
) -> None:
    n = len(picks)
    qty = np.maximum(1, np.round(rng.lognormal(3.0, 1.1, n)))
    fractional = rng.random(n) < 0.1
    cls_idx = rng.integers(0, len(class_ids), n)
    for asset_id, q, frac, c in zip(picks, qty, fractional, cls_idx, strict=True):
        quantity = f"{q + 0.25:.2f}" if frac else str(int(q))
        rows.holdings.append((user_id, asset_id, class_ids[c], quantity))


def _add_rules(
    rows: SeededUsers,
    rng: np.random.Generator,
    version_id: uuid.UUID,
    names: np.ndarray,
    n_rules: int,
) -> None:
    k = len(names)
    metrics = rng.choice(len(METRICS), n_rules)
    for pos, metric_idx in enumerate(metrics):
        metric = METRICS[metric_idx]
        options = THRESHOLDS[metric]
        op, value, value2 = options[int(rng.integers(0, len(options)))]
        points = int(POINTS[rng.integers(0, len(POINTS))])
        rows.rules.append(
            (
                version_id,
                pos,
                f"r{pos + 1}",
                CLASS_NAMES[names[rng.integers(0, k)]],
                metric,
                op,
                value or None,
                value2,
                points,
            )
        )


def _round_amount(amount: float, currency: str) -> str:
    """A round-looking contribution in `currency`: multiples of 10 (1,000 for JPY)."""
    step = 1000 if currency == "JPY" else 10
    return str(max(step, round(amount / step) * step))
