"""Small user documents as `overnight load` reads them, written by hand for the tests and
benchmarks that change a few users and watch the result (the big synthetic files are in
load_files)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any


def one_class_user(
    user_id: uuid.UUID,
    *,
    market: str,
    symbols: Iterable[str],
    contribution: str = "1000",
    currency: str = "USD",
    active: bool = True,
) -> dict[str, Any]:
    """A user with one class, Stocks (0-100 %), holding 10 of each of `symbols` on `market`,
    and one rule: 5 points for any asset that has a P/E."""
    return {
        "id": str(user_id),
        "baseCurrency": currency,
        "defaultContribution": contribution,
        "active": active,
        "assetClasses": [{"name": "Stocks", "targetMin": "0", "targetMax": "100"}],
        "holdings": [
            {"market": market, "symbol": s, "quantity": "10", "assetClass": "Stocks"}
            for s in symbols
        ],
        "criteria": [
            {
                "id": "pe",
                "assetClass": "Stocks",
                "metric": "pe_ratio",
                "operator": "exists",
                "points": 5,
            }
        ],
    }
