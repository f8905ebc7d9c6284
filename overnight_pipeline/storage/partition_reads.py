"""Who a market-date partition's calculation is for and what they hold: its users (active,
home market = the partition's on its date: BEHAVIOUR §1), the assets they hold and the
currencies they need. Read once per calculation (`storage.rosters`), on both dialects.

The users are grouped in the database by the set of markets they hold (one row per distinct
set, its users' ids as one string): the home market is decided once per set, and this
process makes no row, tuple or UUID object per user (issue 25: a row and a UUID per user was
most of the roster's Python). Ids travel as their canonical text, whose order is the ids'.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from sqlalchemy import Connection, select, union
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import aggregate_strings

from overnight_pipeline.core.markets import Market, home_code
from overnight_pipeline.storage.dialect import among, among_literal, id_chunks, id_text
from overnight_pipeline.storage.models import assets_table, holdings_table, users_table

# Between a user's market codes in the aggregated string (a code is never made of it).
_SEP = "\x1f"


def partition_user_texts(
    conn: Connection, *, market: str, day: date, markets: Mapping[str, Market]
) -> list[str]:
    """The ids, as text and sorted, of the active users whose home market on `day` is
    `market`: users holding no configured market are left out, and markets that are not
    configured are ignored (`core.markets.held_markets`' rules)."""
    h, a, u = holdings_table, assets_table, users_table
    # Each user's markets first, then whether the user is active: the users are joined to
    # one row per (user, market), not to every holding.
    pairs = select(h.c.user_id, a.c.market).distinct().join(a, a.c.id == h.c.asset_id).subquery()
    per_user = (
        select(pairs.c.user_id, aggregate_strings(pairs.c.market, _SEP).label("codes"))
        .join(u, u.c.id == pairs.c.user_id)
        .where(u.c.active.is_(True))
        .group_by(pairs.c.user_id)
        .subquery()
    )
    rows = conn.execute(
        select(per_user.c.codes, aggregate_strings(id_text(per_user.c.user_id), ",")).group_by(
            per_user.c.codes
        )
    )
    chosen: list[str] = []
    for codes, ids in rows:
        held = {c for c in codes.split(_SEP) if c in markets}
        if held and home_code(held, markets, day) == market:
            chosen += ids.split(",")
    chosen.sort()
    return chosen


def partition_users(
    conn: Connection, *, market: str, day: date, markets: Mapping[str, Market]
) -> list[uuid.UUID]:
    """Active users whose home market on `day` is `market` (BEHAVIOUR §1), sorted by id."""
    return list(map(uuid.UUID, partition_user_texts(conn, market=market, day=day, markets=markets)))


def _among(
    column: ColumnElement[Any], ids: Sequence[uuid.UUID | str], dialect: str
) -> ColumnElement[bool]:
    """`column` is one of `ids` (UUIDs or their text): `dialect.among_literal`, the ids made
    UUIDs where the dialect adapts them one by one."""
    if dialect == "postgresql":
        return among_literal(column, ids, dialect)
    return among(column, [i if isinstance(i, uuid.UUID) else uuid.UUID(i) for i in ids], dialect)


def partition_instruments(
    conn: Connection, user_ids: Sequence[uuid.UUID | str]
) -> dict[tuple[str, str], tuple[uuid.UUID, str]]:
    """Distinct assets held by `user_ids`: (market, symbol) → (asset id, currency)."""
    h, a = holdings_table, assets_table
    dialect = conn.dialect.name
    found: dict[tuple[str, str], tuple[uuid.UUID, str]] = {}
    for chunk in id_chunks(conn, user_ids):
        held = select(h.c.asset_id).where(_among(h.c.user_id, chunk, dialect))
        rows = conn.execute(
            select(a.c.market, a.c.symbol, a.c.id, a.c.currency).where(a.c.id.in_(held))
        )
        found.update({(m, s): (i, c) for m, s, i, c in rows})
    return found


def partition_currencies(
    conn: Connection,
    user_ids: Sequence[uuid.UUID | str],
    *,
    instruments: Mapping[tuple[str, str], tuple[uuid.UUID, str]] | None = None,
) -> set[str]:
    """Base currencies of `user_ids` and currencies of the assets they hold; given the
    users' `instruments` (`partition_instruments`), the assets' currencies are theirs and
    only the users are read (not every holding a second time)."""
    h, a, u = holdings_table, assets_table, users_table
    dialect = conn.dialect.name
    found: set[str] = set()
    if instruments is not None:
        found.update(currency for _, currency in instruments.values())
        for chunk in id_chunks(conn, user_ids):
            found.update(
                conn.scalars(
                    select(u.c.base_currency).distinct().where(_among(u.c.id, chunk, dialect))
                )
            )
        return found
    for chunk in id_chunks(conn, user_ids):
        held = select(h.c.asset_id).where(_among(h.c.user_id, chunk, dialect))
        found.update(
            conn.scalars(
                union(
                    select(u.c.base_currency).where(_among(u.c.id, chunk, dialect)),
                    select(a.c.currency).where(a.c.id.in_(held)),
                )
            )
        )
    return found
