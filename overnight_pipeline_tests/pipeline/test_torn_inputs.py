"""`overnight load` rewriting users in a loop while a partition processes them: each user's
`INPUTS_CAPTURED` is one committed state of the user, never a mix (issue 23, torn inputs)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
from dagster import DagsterInstance
from sqlalchemy import select

from overnight_pipeline.core.captured_reader import captured_rules, holding_assets, own_inputs
from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.seed import seed
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import (
    assets_table,
    calculation_events_table,
    calculation_snapshots_table,
)
from overnight_pipeline_tests.pipeline.conftest import DAY, Pipeline
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
)

CHURNING = [uuid.UUID(f"00000000-0000-4000-8000-{i:012x}") for i in range(0xC000, 0xC000 + 60)]
ANCHOR = uuid.UUID("00000000-0000-4000-8000-00000000a0c0")
ASSETS = [
    {"market": "NYSE", "symbol": f"CHRN{i}", "currency": "USD", "name": f"Churn {i}"}
    for i in (1, 2, 3)
]

# Two versions of the same users' documents; every part of them tells which one it is.
VERSIONS: dict[str, dict[str, Any]] = {
    "A": {
        "contribution": "1000",
        "classes": [("Stocks", "0", "100")],
        "holdings": [("CHRN1", "10"), ("CHRN2", "10"), ("CHRN3", "10")],
        "points": 5,
    },
    "B": {
        "contribution": "5000",
        "classes": [("Stocks", "10", "90")],
        "holdings": [("CHRN1", "20")],  # the other two sold
        "points": 7,
    },
}


def _user(user_id: uuid.UUID, version: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": str(user_id),
        "baseCurrency": "USD",
        "defaultContribution": version["contribution"],
        "active": True,
        "assetClasses": [
            {"name": n, "targetMin": lo, "targetMax": hi} for n, lo, hi in version["classes"]
        ],
        "holdings": [
            {"market": "NYSE", "symbol": s, "quantity": q, "assetClass": "Stocks"}
            for s, q in version["holdings"]
        ],
        "criteria": [
            {
                "id": "pe",
                "assetClass": "Stocks",
                "metric": "pe_ratio",
                "operator": "exists",
                "points": version["points"],
            }
        ],
    }


def _file(name: str) -> Any:
    # The anchor keeps every churned asset held (so priced) whatever version is loaded.
    users = [_user(u, VERSIONS[name]) for u in CHURNING] + [_user(ANCHOR, VERSIONS["A"])]
    return parse_load_file({"assets": ASSETS, "users": users}, markets=load_markets())


@pytest.fixture(scope="module")
def torn_db() -> Iterator[str]:
    url = create_pg_database("overnight_torn")
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        seed(conn, users=40, seed=11, as_of=DAY)
        load(conn, _file("A"))
    engine.dispose()
    yield url
    drop_pg_database(url)


@pytest.fixture
def small_batches(torn_db: str, redis_prefix: str) -> Iterator[Pipeline]:
    """The pipeline in process with batches of 2 users: many batch reads to tear."""
    settings = load_settings(
        database_url=torn_db, redis_url=REDIS_URL, cache_prefix=redis_prefix, user_batch_size=2
    )
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(REDIS_URL)
    with DagsterInstance.ephemeral() as instance:
        yield Pipeline(
            settings, engine, client, definitions_for(settings, env_vars=False), instance
        )
    client.close()
    engine.dispose()


def _as_version(doc: dict[str, Any], snapshots: dict[str, Any], symbols: dict[str, str]) -> Any:
    """The parts of a captured document that a version sets, in the versions' own terms."""
    doc = own_inputs(doc, snapshots)  # format 5: the user's own inputs are a snapshot
    rows = doc["holdings"]["rows"]
    assets = holding_assets(doc, snapshots)
    return {
        "contribution": doc["contribution"],
        "classes": [(c["name"], c["targetMin"], c["targetMax"]) for c in doc["assetClasses"]],
        "holdings": sorted(
            (symbols[aid], qty) for aid, (_, _cls, qty) in zip(assets, rows, strict=True)
        ),
        "points": {r["points"] for r in captured_rules(doc, snapshots)},
    }


def test_loads_in_a_loop_during_a_run_never_tear_a_users_inputs(
    small_batches: Pipeline,
) -> None:
    stop = threading.Event()
    loads = {"count": 0}
    files = [_file("B"), _file("A")]

    def churn() -> None:
        while not stop.is_set():
            with small_batches.engine.begin() as conn:
                load(conn, files[loads["count"] % 2])
            loads["count"] += 1

    thread = threading.Thread(target=churn, name="overnight-load-loop")
    thread.start()
    try:
        result = small_batches.run("NYSE", DAY)
    finally:
        stop.set()
        thread.join()
    assert result.success
    assert loads["count"] >= 5, loads  # the loads really ran during the run

    e, s = calculation_events_table, calculation_snapshots_table
    with small_batches.engine.connect() as conn:
        captured = {
            uid: orjson.loads(payload) if isinstance(payload, (str, bytes)) else payload
            for uid, payload in conn.execute(
                select(e.c.user_id, e.c.payload).where(
                    e.c.event_type == "INPUTS_CAPTURED", e.c.user_id.in_(CHURNING)
                )
            )
        }
        snapshots = {
            key: orjson.loads(p) if isinstance(p, (str, bytes)) else p
            for key, p in conn.execute(select(s.c.hash, s.c.payload))
        }
        symbols = {
            str(aid): sym
            for aid, sym in conn.execute(select(assets_table.c.id, assets_table.c.symbol))
        }
    assert len(captured) == len(CHURNING)
    expected = {
        name: {
            "contribution": v["contribution"],
            "classes": v["classes"],
            "holdings": sorted(v["holdings"]),
            "points": {v["points"]},
        }
        for name, v in VERSIONS.items()
    }
    seen = {uid: _as_version(doc, snapshots, symbols) for uid, doc in captured.items()}
    torn = {uid: got for uid, got in seen.items() if got not in expected.values()}
    assert not torn
    # Both versions were captured: the loads did interleave with the batches.
    kinds = {name for got in seen.values() for name, want in expected.items() if got == want}
    assert kinds == {"A", "B"}, kinds
