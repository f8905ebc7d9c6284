"""Who a calculation of one partition is for, decided once per calculation (`partition_rosters`).

The partition's users (active, home market = the partition's on its date), the assets they
hold and the currencies they need were computed by each step of a run: the rates, prices,
fundamentals and every shard step, four or more times a run over every holding of the
database (≈ 0.4 s + 0.2 s per step at 20,000 users, ≈ 5 × that at 100,000; issue 25). The
first step of a calculation now computes and stores them under the calculation's
correlation id (the same for its retries and re-executions); the others read them back in
one row. Two steps racing to store it: the first insert wins and both use what is stored.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, delete, select

from overnight_pipeline.core.markets import Market
from overnight_pipeline.storage.batches import (
    partition_currencies,
    partition_instruments,
    partition_users,
)
from overnight_pipeline.storage.bulk import upsert
from overnight_pipeline.storage.models import partition_rosters_table

# Long enough for any re-execution of a night; a later one computes the roster again.
KEPT = timedelta(days=7)

Instrument = tuple[str, str]  # (market, symbol)


@dataclass(frozen=True)
class Roster:
    users: list[uuid.UUID]  # sorted by id
    instruments: dict[Instrument, tuple[uuid.UUID, str]]  # → (asset id, currency)
    currencies: set[str]


def roster(
    conn: Connection,
    *,
    correlation_id: uuid.UUID,
    market: str,
    day: date,
    markets: Mapping[str, Market],
) -> Roster:
    """The calculation's roster: stored by its first step, read by the others. Commits
    nothing itself: call it in a transaction of its own (`engine.begin()`)."""
    found = _stored(conn, correlation_id)
    if found is not None:
        return found
    if conn.dialect.name == "postgresql":
        # Each query reads every holding once: parallel workers would only add their start
        # and coordination to the CPU (issue 25; the transaction is the caller's own).
        conn.exec_driver_sql("SET LOCAL max_parallel_workers_per_gather = 0")
    users = partition_users(conn, market=market, day=day, markets=markets)
    instruments = partition_instruments(conn, users)
    currencies = partition_currencies(conn, users, instruments=instruments) if users else set()
    now = datetime.now(UTC)
    t = partition_rosters_table
    conn.execute(delete(t).where(t.c.created_at < now - KEPT))
    upsert(
        conn,
        t,
        [
            {
                "correlation_id": correlation_id,
                "created_at": now,
                "market_date": day,
                "market": market,
                "user_ids": b"".join(u.bytes for u in users),
                "instruments": sorted([m, s, str(i), c] for (m, s), (i, c) in instruments.items()),
                "currencies": sorted(currencies),
            }
        ],
        key=["correlation_id"],
        update=[],
    )
    stored = _stored(conn, correlation_id)
    assert stored is not None  # inserted, or inserted first by another step
    return stored


def _stored(conn: Connection, correlation_id: uuid.UUID) -> Roster | None:
    t = partition_rosters_table
    row = conn.execute(
        select(t.c.user_ids, t.c.instruments, t.c.currencies).where(
            t.c.correlation_id == correlation_id
        )
    ).first()
    if row is None:
        return None
    packed: bytes = row.user_ids
    return Roster(
        users=[uuid.UUID(bytes=packed[i : i + 16]) for i in range(0, len(packed), 16)],
        instruments={(m, s): (uuid.UUID(i), c) for m, s, i, c in row.instruments},
        currencies=set(row.currencies),
    )
