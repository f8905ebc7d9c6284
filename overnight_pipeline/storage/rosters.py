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

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from sqlalchemy import Connection, delete, select

from overnight_pipeline.core.markets import Market
from overnight_pipeline.storage.bulk import upsert
from overnight_pipeline.storage.models import partition_rosters_table
from overnight_pipeline.storage.partition_reads import (
    partition_currencies,
    partition_instruments,
    partition_user_texts,
)

# Long enough for any re-execution of a night; a later one computes the roster again.
KEPT = timedelta(days=7)

Instrument = tuple[str, str]  # (market, symbol)


@dataclass(frozen=True)
class Roster:
    packed_users: bytes  # the users' ids, 16 bytes each, sorted
    instruments: dict[Instrument, tuple[uuid.UUID, str]]  # → (asset id, currency)
    currencies: set[str]

    @classmethod
    def of(
        cls,
        users: Sequence[str],
        instruments: dict[Instrument, tuple[uuid.UUID, str]],
        currencies: set[str],
    ) -> Roster:
        """The roster of `users` (their ids' canonical text, sorted)."""
        return cls(_packed(users), instruments, currencies)

    @functools.cached_property
    def users(self) -> list[uuid.UUID]:
        """The users, sorted by id: made on first use (the market-data steps only count
        them: `user_count`)."""
        packed = self.packed_users
        return [uuid.UUID(bytes=packed[i : i + 16]) for i in range(0, len(packed), 16)]

    @property
    def user_count(self) -> int:
        return len(self.packed_users) // 16


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
    users = partition_user_texts(conn, market=market, day=day, markets=markets)
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
                "user_ids": _packed(users),
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


def _packed(users: Sequence[str]) -> bytes:
    """The ids' 16 bytes each, from their text, in one C-level call."""
    return bytes.fromhex("".join(users).replace("-", ""))


def _stored(conn: Connection, correlation_id: uuid.UUID) -> Roster | None:
    t = partition_rosters_table
    row = conn.execute(
        select(t.c.user_ids, t.c.instruments, t.c.currencies).where(
            t.c.correlation_id == correlation_id
        )
    ).first()
    if row is None:
        return None
    return Roster(
        packed_users=bytes(row.user_ids),
        instruments={(m, s): (uuid.UUID(i), c) for m, s, i, c in row.instruments},
        currencies=set(row.currencies),
    )
