"""What a market-date partition's calculation reads: its users, their assets and currencies,
the market data of the day, and each batch of users' inputs as the core's frames.

Reads are set-based per batch of users. Every function takes a `Connection` and never
commits. Each read is one SQLAlchemy Core query for both dialects (`storage.dialect`); a
batch's are made once (`_statement`) and read into their frames' blocks (`_block`):
docs/PERFORMANCE.md, "Scale-out", "Figures once quoted in the code" and "The lean night
(issue 25)".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    Connection,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    func,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.types import NullType

from overnight_pipeline.core.batch import (
    CLASS_COLUMNS,
    HOLDING_COLUMNS,
    RULE_COLUMNS,
    USER_COLUMNS,
    Batch,
)
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.storage.dialect import among, array_literal, id_chunks, id_text, trimmed
from overnight_pipeline.storage.models import (
    asset_classes_table,
    asset_fundamentals_table,
    asset_prices_table,
    assets_table,
    criteria_rules_table,
    criteria_versions_table,
    exchange_rates_table,
    holdings_table,
    users_table,
)

# Re-exported: the partition's users and assets are read there, and imported from here too.
from overnight_pipeline.storage.partition_reads import partition_currencies as partition_currencies
from overnight_pipeline.storage.partition_reads import (
    partition_instruments as partition_instruments,
)
from overnight_pipeline.storage.partition_reads import partition_users as partition_users

# What a partition's batches read and rewrite (`ensure_statistics`).
BATCH_TABLES = (
    "users",
    "asset_classes",
    "holdings",
    "assets",
    "criteria_versions",
    "criteria_rules",
    "user_scores",
    "calculation_events",
)


def ensure_statistics(conn: Connection, tables: Sequence[str] = BATCH_TABLES) -> list[str]:
    """ANALYZE those of `tables` that PostgreSQL has never analyzed; returns their names.

    Without statistics (a freshly bulk-loaded database where autovacuum has not run yet, or
    is off, as on this project's CI server) the planner guesses that `user_id = ANY(1,000
    ids)` matches every row and scans the whole table for each batch, slower and slower as
    users grow. ANALYZE samples each table once, cheaply, and blocks neither reads nor writes
    (docs/PERFORMANCE.md, "The overnight pipeline end to end"). No-op elsewhere and on
    tables that have statistics (autovacuum keeps those fresh). A partitioned table's months
    are analyzed each (the planner reads their statistics)."""
    if conn.dialect.name != "postgresql":
        return []
    missing = list(
        conn.scalars(
            text(
                "SELECT c.relname FROM pg_class c"
                " WHERE coalesce(pg_partition_root(c.oid)::text, c.relname) = ANY(:names)"
                " AND c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace"
                " AND c.reltuples < 0"
            ).bindparams(bindparam("names", list(tables), type_=ARRAY(Text)))
        )
    )
    for name in missing:
        conn.exec_driver_sql(f'ANALYZE "{name}"')
    return missing


def load_rates(conn: Connection, *, day: date) -> FxRates:
    """The newest stored USD-quoted rate of each currency on or before `day`; stale when any
    of them is from an earlier date (the rate provider fell back to stored values)."""
    r = exchange_rates_table
    newest = (
        select(r.c.quote, func.max(r.c.rate_date).label("rate_date"))
        .where(r.c.base == "USD", r.c.rate_date <= day)
        .group_by(r.c.quote)
        .subquery()
    )
    rows = conn.execute(
        select(r.c.quote, trimmed(r.c.rate), r.c.rate_date, r.c.as_of).join(
            newest,
            and_(
                r.c.quote == newest.c.quote, r.c.rate_date == newest.c.rate_date, r.c.base == "USD"
            ),
        )
    ).all()
    usd_to = {q: rate for q, rate, _, _ in rows if q != "USD"}
    as_of = min((row.as_of for row in rows), default=None)
    stale = any(row.rate_date < day for row in rows)
    return FxRates(usd_to=usd_to, as_of=as_of, stale=stale)


@dataclass(frozen=True)
class MarketSnapshot:
    """Prices and fundamentals of a partition's assets: the newest stored on or before the
    day, loaded once per step and shared by its batches."""

    prices: dict[str, tuple[Decimal, str, datetime]]  # asset id → (price, currency, as_of)
    fundamentals: pd.DataFrame  # indexed by asset id (str), one column per metric
    stale_prices: int


def load_market_snapshot(
    conn: Connection, asset_ids: Sequence[uuid.UUID], *, day: date
) -> MarketSnapshot:
    p = asset_prices_table
    dialect = conn.dialect.name
    prices: dict[str, tuple[Decimal, str, datetime]] = {}
    stale = 0
    for chunk in id_chunks(conn, asset_ids):
        latest = (
            select(p.c.asset_id, func.max(p.c.price_date).label("price_date"))
            .where(p.c.price_date <= day, among(p.c.asset_id, chunk, dialect))
            .group_by(p.c.asset_id)
            .subquery()
        )
        rows = conn.execute(
            select(
                id_text(p.c.asset_id), trimmed(p.c.price), p.c.currency, p.c.as_of, p.c.price_date
            ).join(
                latest,
                and_(p.c.asset_id == latest.c.asset_id, p.c.price_date == latest.c.price_date),
            )
        )
        for aid, price, currency, as_of, price_date in rows:
            prices[aid] = (price, currency, as_of)
            stale += price_date < day
    return MarketSnapshot(prices, _fundamentals(conn, asset_ids, day=day), stale)


def _fundamentals(conn: Connection, asset_ids: Sequence[uuid.UUID], *, day: date) -> pd.DataFrame:
    f = asset_fundamentals_table
    f2 = asset_fundamentals_table.alias("f2")
    dialect = conn.dialect.name
    newest = (
        select(func.max(f2.c.fundamentals_date))
        .where(f2.c.asset_id == f.c.asset_id, f2.c.fundamentals_date <= day)
        .scalar_subquery()
    )
    data: list[tuple[Any, ...]] = []
    for chunk in id_chunks(conn, asset_ids):
        rows = conn.execute(
            select(id_text(f.c.asset_id), *(trimmed(f.c[m]) for m in METRICS)).where(
                among(f.c.asset_id, chunk, dialect), f.c.fundamentals_date == newest
            )
        )
        data.extend(tuple(row) for row in rows)
    frame = pd.DataFrame(data, columns=["asset_id", *METRICS], dtype=object)
    return frame.set_index("asset_id")


@dataclass(frozen=True)
class LoadedBatch:
    batch: Batch
    criteria_versions: dict[Any, int | None]
    holding_markets: list[str]


def load_batch(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, snapshot: MarketSnapshot
) -> LoadedBatch:
    """The core's batch frames for `user_ids`, priced from `snapshot`; rules are each user's
    active criteria version. Ids are strings, numerics as written (`trimmed`). Read it on a
    `snapshot_reads` connection, or its statements may see different committed states.

    Four queries, each table reached through its user_id index; ids come back as text made
    by the database (`id_text`). Each result is read in slices straight into the object
    block its frame is a view of (`_block`): no Python per row (a tuple per row, rebuilt and
    then split again by pandas, was half of a batch's load)."""
    ids = _ids(conn, list(user_ids))
    versions, rules = _criteria(conn, ids)
    # The users' criteria versions fill the block's last row.
    users = _block(conn, _users, ids, decimals=(2,), height=4)
    users[3] = list(map(versions.get, users[0]))
    classes = _block(conn, _classes, ids, decimals=(2, 3, 5))
    holdings, markets = _holdings(conn, ids, snapshot.prices)
    batch = Batch(
        users=_frame(USER_COLUMNS, users),
        classes=_frame(CLASS_COLUMNS, classes),
        holdings=_frame(HOLDING_COLUMNS, holdings),
        rules=_frame(RULE_COLUMNS, rules),
        fundamentals=snapshot.fundamentals,
    )
    return LoadedBatch(batch, versions, markets)


def _frame(names: Sequence[str], block: np.ndarray) -> pd.DataFrame:
    """A frame of object columns `names` on the first rows of `block` (one row per column:
    the layout `pd.DataFrame(rows, dtype=object)` gives), not copied."""
    return pd.DataFrame(block[: len(names)].T, columns=list(names), dtype=object, copy=False)


_Within = Callable[[ColumnElement[Any]], ColumnElement[bool]]
_Build = Callable[[_Within], Select[Any]]
_STATEMENTS: dict[tuple[_Build, str], Select[Any]] = {}


def _ids(conn: Connection, ids: list[uuid.UUID]) -> Any:
    """The batch's `ids` as the statements' parameter `ids`. PostgreSQL: the array's text,
    the untyped parameter of `CAST(:ids AS uuid[])`, a constant when PostgreSQL plans and not
    1,000 ids adapted by the driver. Elsewhere the list, an expanding IN."""
    if conn.dialect.name != "postgresql":
        return ids
    return array_literal(ids)


def _statement(conn: Connection, build: _Build) -> Select[Any]:
    """`build`'s statement for the connection's dialect, made once (its construction cost
    more than its execution): every condition on a user id reads the one parameter `ids`."""
    dialect = conn.dialect.name
    found = _STATEMENTS.get((build, dialect))
    if found is not None:
        return found

    def within(column: ColumnElement[Any]) -> ColumnElement[bool]:
        if dialect == "postgresql":
            ids = cast(bindparam("ids", type_=NullType()), ARRAY(column.type))
            return column == any_(ids)
        return column.in_(bindparam("ids", expanding=True))

    found = _STATEMENTS[(build, dialect)] = build(within)
    return found


def _block(
    conn: Connection,
    build: _Build,
    ids: Any,
    *,
    decimals: Sequence[int] = (),
    rows: Sequence[int] = (),
    height: int = 0,
) -> np.ndarray:
    """The result of `build`'s statement for `ids` as an object array of one row per column
    (column j in row `rows[j]`, by default row j; `height` rows at least), filled slice by
    slice as it is fetched: each fetched row dies young (before the collector's older
    generations would scan it) and each value is placed once, where its frame reads it.
    With psycopg, the driver's tuples from the result's cursor (no result processor is
    needed). The rows `decimals` (numerics sent as their text: `_after_sort`) become
    Decimals."""
    result = conn.execute(_statement(conn, build), {"ids": ids})
    try:
        fetch: Callable[[int], Sequence[Any]]
        if conn.dialect.driver == "psycopg":
            cursor = result.cursor
            count, fetch = cursor.rowcount, cursor.fetchmany
        else:
            parts: list[Sequence[Any]] = [[], result.fetchall()]
            count, fetch = len(parts[1]), lambda _: parts.pop()  # all at once, then nothing
        rows = rows or range(len(result.keys()))
        block = np.empty((max(height, max(rows) + 1), count), dtype=object)
        start = 0
        while part := fetch(_SLICE):
            end = start + len(part)
            for row, values in zip(rows, zip(*part, strict=True), strict=True):
                block[row, start:end] = values
            start = end
    finally:
        result.close()
    assert start == count
    for row in decimals:
        block[row] = _decimals(block[row])
    return block


def _decimals(row: np.ndarray) -> np.ndarray:
    """The Decimals of the texts of `row` (None stays None), each distinct text parsed once: a
    batch's numerics repeat (the 300,000 quantities of 10,000 seeded users have 1,256 values,
    their 100,000 rule values 16), and the driver's Decimal per value was a fifth of a load.
    Made by `np.fromiter`: a list assigned to an object array has each Decimal inspected."""
    texts = row.tolist()
    made: dict[str | None, Decimal | None] = {t: Decimal(t) for t in set(texts) if t is not None}
    made[None] = None
    return np.fromiter(map(made.__getitem__, texts), dtype=object, count=len(texts))


_SLICE = 2000


def _after_sort(
    inner: Select[Any],
    *,
    order: Sequence[str],
    ids: Sequence[str],
    numerics: Sequence[str] = (),
    hidden: Sequence[str] = (),
) -> Select[Any]:
    """`inner`, sorted by `order`, read through a subquery: the outer SELECT makes the text
    of the columns `ids` (`id_text`) and of the columns `numerics`, trimmed (`trimmed`; made
    Decimals by `_block`), leaves out `hidden` and keeps the subquery's order (PostgreSQL
    sees it sorted: no second sort).
    The per-value functions so run on the sorted rows as they are sent: made before the
    sort, the ids' text widened the sorted tuples (the holdings' sort spilled to disk) and
    cost PostgreSQL a quarter of a batch's reads."""
    s = inner.subquery()
    columns = [
        id_text(c) if c.name in ids else cast(trimmed(c), Text) if c.name in numerics else c
        for c in s.c
        if c.name not in hidden
    ]
    return select(*columns).order_by(*(s.c[name] for name in order))


def _criteria(conn: Connection, ids: Any) -> tuple[dict[Any, int | None], np.ndarray]:
    """Each user's newest criteria version, and the block of those versions' rules in
    order, the version in its last row (a user without rules has one row of nulls, left
    out)."""
    block = _block(conn, _criteria_statement, ids, decimals=(5, 6))
    versions = dict(zip(block[0].tolist(), block[-1].tolist(), strict=True))
    keep = block[1] != None  # noqa: E711 (elementwise)
    return versions, block if keep.all() else block[:, keep]


def _criteria_statement(within: _Within) -> Select[Any]:
    v, r = criteria_versions_table, criteria_rules_table
    n = criteria_versions_table.alias("n")
    newest = select(func.max(n.c.version)).where(n.c.user_id == v.c.user_id).scalar_subquery()
    return _after_sort(
        # The sort's keys first: a key after a variable-length column is found by walking
        # the columns before it, at every comparison.
        select(
            v.c.user_id,
            r.c.position,
            r.c.rule_id,
            r.c.asset_class,
            r.c.metric,
            r.c.operator,
            r.c.value,
            r.c.value2,
            r.c.points,
            v.c.version,
        )
        .outerjoin(r, r.c.criteria_version_id == v.c.id)
        .where(within(v.c.user_id), v.c.version == newest)
        .order_by(v.c.user_id, r.c.position),
        order=("user_id", "position"),
        ids=("user_id",),
        numerics=("value", "value2"),
        hidden=("position",),
    )


def _users(within: _Within) -> Select[Any]:
    u = users_table
    return _after_sort(
        select(u.c.id, u.c.base_currency, u.c.default_contribution)
        .where(within(u.c.id))
        .order_by(u.c.id),
        order=("id",),
        ids=("id",),
        numerics=("default_contribution",),
    )


def _classes(within: _Within) -> Select[Any]:
    c = asset_classes_table
    return _after_sort(
        select(
            c.c.user_id,
            c.c.position,  # the sort's keys first (`_criteria`)
            c.c.name,
            c.c.target_min,
            c.c.target_max,
            c.c.max_assets,
            c.c.min_allocation_value,
        )
        .where(within(c.c.user_id))
        .order_by(c.c.user_id, c.c.position, c.c.name),
        order=("user_id", "position", "name"),
        ids=("user_id",),
        numerics=("target_min", "target_max", "min_allocation_value"),
        hidden=("position",),
    )


def _holdings(
    conn: Connection, ids: Any, prices: dict[str, tuple[Decimal, str, datetime]]
) -> tuple[np.ndarray, list[str]]:
    """The holdings' block, priced from `prices` (its rows 5-7: currency, price, as of), and
    the market of each. An asset's quote is the same on every row of it: found once per
    asset of the batch, then spread over the rows by C-level maps."""
    # The statement's columns: user, asset, symbol, class, quantity, currency, market.
    block = _block(conn, _holdings_statement, ids, decimals=(4,), rows=(0, 1, 2, 3, 4, 5, 8))
    aids = block[1].tolist()
    assets = dict(zip(aids, block[5].tolist(), strict=True))  # asset → its currency
    quotes = [prices.get(aid, _NO_QUOTE) for aid in assets]
    quoted = np.empty((3, len(assets)), dtype=object)  # each asset's currency, price, as of
    quoted[0] = [q[1] or currency for q, currency in zip(quotes, assets.values(), strict=True)]
    quoted[1] = [q[0] for q in quotes]
    quoted[2] = [q[2] for q in quotes]
    position = dict(zip(assets, range(len(assets)), strict=True))
    at = np.fromiter(map(position.__getitem__, aids), dtype=np.intp, count=len(aids))
    np.take(quoted, at, axis=1, out=block[5:8])
    return block, block[8].tolist()


_NO_QUOTE = (None, None, None)


def _holdings_statement(within: _Within) -> Select[Any]:
    h, c = holdings_table, asset_classes_table
    # The assets numbered in (market, symbol) order (unique): the holdings are sorted by
    # (user, that number), the order of (user, market, symbol) at a fraction of its cost (a
    # user's ≈ 30 holdings tie on the id, and each tie compared two strings).
    a = select(
        assets_table.c.id,
        func.row_number()
        .over(order_by=(assets_table.c.market, assets_table.c.symbol))
        .label("rank"),
        assets_table.c.market,
        assets_table.c.symbol,
        assets_table.c.currency,
    ).subquery("a")
    # The class is joined on (user_id, id), the holdings' foreign key, and filtered by the
    # batch too, so that PostgreSQL reaches both tables through their user_id indexes.
    return _after_sort(
        select(
            h.c.user_id,
            a.c.rank,
            h.c.asset_id,
            a.c.symbol,
            c.c.name,
            h.c.quantity,
            a.c.currency,
            a.c.market,
        )
        .join(a, a.c.id == h.c.asset_id)
        .join(c, and_(c.c.user_id == h.c.user_id, c.c.id == h.c.asset_class_id))
        .where(within(h.c.user_id), within(c.c.user_id))
        .order_by(h.c.user_id, a.c.rank),
        order=("user_id", "rank"),
        ids=("user_id", "asset_id"),
        numerics=("quantity",),
        hidden=("rank",),
    )
