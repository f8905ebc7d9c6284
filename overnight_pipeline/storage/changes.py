"""The `user_changes` outbox (BEHAVIOUR §5): who changed, which market data to recalculate them
with, and marking their changes processed. Functions never commit: the caller owns the
transaction (the recalculation marks changes in the transaction of its results)."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime

from sqlalchemy import Connection, func, select, update

from overnight_pipeline.core.markets import Market, held_markets
from overnight_pipeline.storage.keysets import keys_in
from overnight_pipeline.storage.models import (
    asset_prices_table,
    assets_table,
    holdings_table,
    user_changes_table,
    users_table,
)


@dataclass(frozen=True)
class Pending:
    """The users with pending changes, up to change `last_id` (later ones stay pending)."""

    user_ids: list[uuid.UUID]
    last_id: int

    def __bool__(self) -> bool:
        return bool(self.user_ids)


def pending(
    conn: Connection, *, user_id: uuid.UUID | None = None, up_to: int | None = None
) -> Pending:
    """Distinct users with unprocessed changes (or only `user_id`'s; only changes with id ≤
    `up_to`), sorted: a user changed twice is one user, computed once from the inputs
    stored now."""
    t = user_changes_table
    stmt = select(t.c.user_id, func.max(t.c.id)).where(t.c.processed_at.is_(None))
    if user_id is not None:
        stmt = stmt.where(t.c.user_id == user_id)
    if up_to is not None:
        stmt = stmt.where(t.c.id <= up_to)
    rows = conn.execute(stmt.group_by(t.c.user_id)).all()
    return Pending(sorted(u for u, _ in rows), max((i for _, i in rows), default=0))


def mark_processed(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, up_to: int, at: datetime
) -> int:
    """Mark the pending changes of `user_ids` with id ≤ `up_to` processed; a change
    recorded after the recalculation read its pending set stays pending."""
    t = user_changes_table
    done = 0
    for wanted in keys_in(conn, [t.c.user_id], [(u,) for u in user_ids]):
        result = conn.execute(
            update(t)
            .where(wanted, t.c.processed_at.is_(None), t.c.id <= up_to)
            .values(processed_at=at)
        )
        done += result.rowcount
    return done


def active_flags(conn: Connection, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, bool]:
    """Each existing user's active flag."""
    u = users_table
    found: dict[uuid.UUID, bool] = {}
    for wanted in keys_in(conn, [u.c.id], [(i,) for i in user_ids]):
        found.update(
            {i: bool(a) for i, a in conn.execute(select(u.c.id, u.c.active).where(wanted))}
        )
    return found


def configured_markets(
    conn: Connection, user_ids: Sequence[uuid.UUID], markets: Mapping[str, Market]
) -> dict[uuid.UUID, set[str]]:
    """The configured markets of each of `user_ids` that holds an asset of one."""
    h, a = holdings_table, assets_table
    found: dict[uuid.UUID, set[str]] = {}
    for wanted in keys_in(conn, [h.c.user_id], [(u,) for u in sorted(user_ids)]):
        rows = conn.execute(
            select(h.c.user_id, a.c.market).distinct().join(a, a.c.id == h.c.asset_id).where(wanted)
        )
        found.update(held_markets(rows, markets))  # a user's rows are in one chunk
    return found


def newest_market_dates(conn: Connection, markets: Sequence[str]) -> dict[str, date]:
    """The newest date for which prices of each market are stored (the latest partition
    that fetched them), by market; a market with none is absent."""
    p, a = asset_prices_table, assets_table
    rows = conn.execute(
        select(a.c.market, func.max(p.c.price_date))
        .join(a, a.c.id == p.c.asset_id)
        .where(a.c.market.in_(list(markets)))
        .group_by(a.c.market)
    )
    return {m: d for m, d in rows if d is not None}


def newest_pending_change(conn: Connection, user_id: uuid.UUID) -> datetime | None:
    """When the user's newest unprocessed change was recorded, or None (one index range)."""
    t = user_changes_table
    return conn.scalar(
        select(t.c.changed_at)
        .where(t.c.user_id == user_id, t.c.processed_at.is_(None))
        .order_by(t.c.changed_at.desc())
        .limit(1)
    )
