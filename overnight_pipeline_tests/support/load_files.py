"""Synthetic `overnight load` files of any size, written as they are generated (never held
whole): the big-file bench (bench/load_bench.py) and the streaming load's tests use them.

About 820 bytes per user as `json.dumps` writes them (100,000 users ≈ 82 MB, the size of
issue 23's file): 2-3 classes, 2-6 holdings and 1-2 rules each, over the seed's asset
universe. Deterministic for a given seed.
"""

from __future__ import annotations

import json
import random
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from overnight_pipeline.seed import BASE_CURRENCIES, CLASS_NAMES, THRESHOLDS, universe


def assets() -> list[dict[str, Any]]:
    return [{"market": m, "symbol": s, "currency": c, "name": n} for m, s, c, n in universe()]


def users(count: int, seed: int = 0, *, version: int = 0) -> Iterator[dict[str, Any]]:
    """`count` users; the same ids for every `version`, whose inputs differ for about half
    the users from one version to the next (contribution, a quantity, a band)."""
    shape = random.Random(seed)
    by_market: dict[str, list[tuple[str, str]]] = {}
    for market, symbol, _, _ in universe():
        by_market.setdefault(market, []).append((market, symbol))
    markets = sorted(by_market)
    metrics = sorted(THRESHOLDS)
    for i in range(count):
        user_id = uuid.UUID(int=shape.getrandbits(128), version=4)
        changed = shape.random() < 0.5 and version > 0
        bump = version if changed else 0
        classes = shape.sample(CLASS_NAMES, shape.randint(2, 3))
        held = shape.sample(by_market[shape.choice(markets)], shape.randint(2, 6))
        rules = []
        for k in range(shape.randint(1, 2)):
            metric = shape.choice(metrics)
            operator, value, value2 = shape.choice(THRESHOLDS[metric])
            rule: dict[str, Any] = {
                "id": f"r{k + 1}",
                "assetClass": shape.choice(classes),
                "metric": metric,
                "operator": operator,
            }
            if value:
                rule["value"] = value
            if value2:
                rule["value2"] = value2
            rule["points"] = shape.choice([-10, 5, 10, 20])
            rules.append(rule)
        yield {
            "id": str(user_id),
            "baseCurrency": shape.choice(BASE_CURRENCIES),
            "defaultContribution": f"{(shape.randint(2, 100) + bump) * 50}.00",
            "active": shape.random() < 0.97 or i % 7 == 0,
            "assetClasses": [
                {
                    "name": name,
                    "targetMin": str(0 if j else bump % 3),
                    "targetMax": str(100 // len(classes) + 10),
                    **({"maxAssets": 5} if j == 0 else {}),
                }
                for j, name in enumerate(classes)
            ],
            "holdings": [
                {
                    "market": market,
                    "symbol": symbol,
                    "quantity": str(shape.randint(1, 400) + (bump if j == 0 else 0)),
                    "assetClass": classes[j % len(classes)],
                }
                for j, (market, symbol) in enumerate(held)
            ],
            "criteria": rules,
        }


def write(
    path: Path, count: int, seed: int = 0, *, version: int = 0, users_first: bool = False
) -> Path:
    """A load file of `count` users (`users`) and the whole asset universe at `path`, the
    assets before the users unless `users_first`."""
    universe = json.dumps(assets())
    with path.open("w", encoding="utf-8") as out:
        out.write('{"users": [\n' if users_first else '{"assets": ' + universe + ', "users": [\n')
        for i, user in enumerate(users(count, seed, version=version)):
            out.write((",\n" if i else "") + json.dumps(user))
        out.write('\n], "assets": ' + universe + "}\n" if users_first else "\n]}\n")
    return path
