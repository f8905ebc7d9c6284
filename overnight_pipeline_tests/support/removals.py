"""The state before a load that removes 10,000 holdings, and that load's file (issue 23: a
row-value IN list of 5,000 pairs was JIT-compiled for more than 8 minutes): the scenario of
storage/test_load_removals.py and bench/load_removals_bench.py."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from overnight_pipeline.storage.bulk import copy_rows
from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    holdings_table,
    users_table,
)

USERS = 200  # in the file: each holds ASSETS assets, then keeps KEPT of them
ASSETS = 55
KEPT = 5
REMOVED = USERS * (ASSETS - KEPT)  # 10,000
OTHERS = 600  # users the file leaves alone: the rest of the holdings table (33,000 rows)


def seed_holdings(conn: Connection) -> tuple[list[uuid.UUID], list[uuid.UUID], list[str]]:
    """The state before the file, written set-wise (a 10,000-holding file would cost its
    parse, which is not what is tested)."""
    symbols = [f"S{i:03d}" for i in range(ASSETS)]
    assets = [uuid.uuid4() for _ in symbols]
    conn.execute(
        assets_table.insert(),
        [
            {"id": i, "market": "NYSE", "symbol": s, "currency": "USD"}
            for i, s in zip(assets, symbols, strict=True)
        ],
    )
    users = [uuid.uuid4() for _ in range(USERS + OTHERS)]
    classes = {u: uuid.uuid4() for u in users}
    conn.execute(
        users_table.insert(),
        [
            {"id": u, "base_currency": "USD", "default_contribution": Decimal(1000), "active": True}
            for u in users
        ],
    )
    conn.execute(
        asset_classes_table.insert(),
        [
            {
                "id": classes[u],
                "user_id": u,
                "name": "Stocks",
                "position": 0,
                "target_min": Decimal(0),
                "target_max": Decimal(100),
            }
            for u in users
        ],
    )
    copy_rows(
        conn,
        holdings_table,
        ["user_id", "asset_id", "asset_class_id", "quantity"],
        ((u, a, classes[u], Decimal(3)) for u in users for a in assets),
    )
    return users, assets, symbols


def selling_file(users: list[uuid.UUID], symbols: list[str]) -> dict[str, Any]:
    """Each of `users` keeps the first KEPT assets (one with a new quantity): the rest are sold."""
    return {
        "assets": [],
        "users": [
            {
                "id": str(u),
                "baseCurrency": "USD",
                "defaultContribution": "1000.00",
                "assetClasses": [{"name": "Stocks", "targetMin": "0", "targetMax": "100"}],
                "holdings": [
                    {
                        "market": "NYSE",
                        "symbol": s,
                        "quantity": "4" if k == 0 else "3",
                        "assetClass": "Stocks",
                    }
                    for k, s in enumerate(symbols[:KEPT])
                ],
            }
            for u in users
        ],
    }
