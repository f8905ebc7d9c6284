"""What a market-date partition's calculation reads: its users, their assets and currencies,
the market data of the day, and each batch of users' inputs as the core's frames.

Reads are set-based per batch of users. Every function takes a `Connection` and never
commits. Each read is one SQLAlchemy Core query for both dialects (`storage.dialect`). A
raw psycopg twin of `load_batch` is not worth keeping: 1,000-user batches of a 10,000-user
seeded database (`bench/load_batch_bench.py`, alternating both paths per batch on the busy
2-core machine) load in 315-336 ms (median) against 286-309 ms for the removed raw psycopg
path and 850-960 ms for the SQLAlchemy path it had beside it (UUID objects, a Python call
per numeric, a batch's rows kept alive for the garbage collector); docs/PERFORMANCE.md,
"Scale-out" and "Figures once quoted in the code".
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd
from sqlalchemy import (
    Connection,
    Executable,
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
from overnight_pipeline.storage.dialect import among, id_chunks, id_text, trimmed
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
    return _frame(data, ["asset_id", *METRICS]).set_index("asset_id")


@dataclass(frozen=True)
class LoadedBatch:
    batch: Batch
    criteria_versions: dict[Any, int | None]
    holding_markets: list[str]


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns, dtype=object)


def _rows(conn: Connection, statement: Executable) -> Iterator[Any]:
    """The rows of `statement`, fetched in slices: each row dies young, before the garbage
    collector's older generations would scan it (`.all()` kept a batch's 40,000 rows alive
    beside the frames' own tuples, and the collector's passes over them slowed every batch
    load: docs/PERFORMANCE.md, "Figures once quoted in the code"), and without a driver call
    per row. With psycopg the driver's own tuples are read from the result's cursor: every
    column the batch reads comes back from psycopg as it is used (text ids, `trimmed`
    Decimals, strings and integers, no result processor), and a SQLAlchemy row per row
    was a fifth of a batch's load in Python."""
    result = conn.execute(statement)
    if conn.dialect.driver != "psycopg":
        for part in result.partitions(_SLICE):
            yield from part
        return
    cursor = result.cursor
    try:
        while part := cursor.fetchmany(_SLICE):
            yield from part
    finally:
        result.close()


_SLICE = 500


def load_batch(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, snapshot: MarketSnapshot
) -> LoadedBatch:
    """The core's batch frames for `user_ids`, priced from `snapshot`; rules are each user's
    active criteria version. Ids are strings, numerics as written (`trimmed`). Read it on a
    `snapshot_reads` connection, or its statements may see different committed states.

    Four queries, each table reached through its user_id index; ids come back as text made
    by the database (`id_text`) and rows are unpacked as tuples: UUID objects, named row
    access and a per-value type hook were most of a batch's load time. Each result is
    consumed as it is read, in slices (`_rows`), into the frames' tuples."""
    within = _within(conn, list(user_ids))
    versions, rules = _criteria(conn, within)
    users = [
        (uid, base, contribution, versions.get(uid))
        for uid, base, contribution in _users(conn, within)
    ]
    classes = _classes(conn, within)
    holdings, markets = _holdings(conn, within, snapshot.prices)
    batch = Batch(
        users=_frame(users, list(USER_COLUMNS)),
        classes=_frame(classes, list(CLASS_COLUMNS)),
        holdings=_frame(holdings, list(HOLDING_COLUMNS)),
        rules=_frame(rules, list(RULE_COLUMNS)),
        fundamentals=snapshot.fundamentals,
    )
    return LoadedBatch(batch, versions, markets)


_Within = Callable[[ColumnElement[Any]], ColumnElement[bool]]


def _within(conn: Connection, ids: list[uuid.UUID]) -> _Within:
    """`column` is one of the batch's `ids`. PostgreSQL: the array's literal text, made once
    per batch, is the parameter of `CAST(:ids AS uuid[])`: untyped, so PostgreSQL reads it as
    the array, a constant when it plans (the plans of an array parameter); the driver no
    longer adapts the 1,000 ids one by one for each of the five conditions. Elsewhere
    `dialect.among`."""
    dialect = conn.dialect.name
    if dialect != "postgresql":
        return lambda column: among(column, ids, dialect)
    literal = "{" + ",".join(map(str, ids)) + "}"
    return lambda column: (
        column == any_(cast(bindparam(None, literal, type_=NullType()), ARRAY(column.type)))
    )


def _after_sort(
    inner: Select[Any],
    *,
    order: Sequence[str],
    ids: Sequence[str],
    numerics: Sequence[str] = (),
    hidden: Sequence[str] = (),
) -> Select[Any]:
    """`inner`, sorted by `order`, read through a subquery: the outer SELECT makes the text
    of the columns `ids` (`id_text`) and trims the columns `numerics` (`trimmed`), leaves
    out `hidden` and keeps the subquery's order (PostgreSQL sees it sorted: no second sort).
    The per-value functions so run on the sorted rows as they are sent: made before the
    sort, the ids' text widened the sorted tuples (the holdings' sort spilled to disk) and
    cost PostgreSQL a quarter of a batch's reads."""
    s = inner.subquery()
    columns = [
        id_text(c) if c.name in ids else trimmed(c) if c.name in numerics else c
        for c in s.c
        if c.name not in hidden
    ]
    return select(*columns).order_by(*(s.c[name] for name in order))


def _criteria(
    conn: Connection, within: _Within
) -> tuple[dict[Any, int | None], list[tuple[Any, ...]]]:
    """Each user's newest criteria version, and the rules of those versions in order."""
    v, r = criteria_versions_table, criteria_rules_table
    n = criteria_versions_table.alias("n")
    newest = select(func.max(n.c.version)).where(n.c.user_id == v.c.user_id).scalar_subquery()
    versions: dict[Any, int | None] = {}
    rules = []
    for uid, version, *rule in _rows(
        conn,
        _after_sort(
            # The sort's keys first: a key after a variable-length column is found by walking
            # the columns before it, at every comparison.
            select(
                v.c.user_id,
                r.c.position,
                v.c.version,
                r.c.rule_id,
                r.c.asset_class,
                r.c.metric,
                r.c.operator,
                r.c.value,
                r.c.value2,
                r.c.points,
            )
            .outerjoin(r, r.c.criteria_version_id == v.c.id)
            .where(within(v.c.user_id), v.c.version == newest)
            .order_by(v.c.user_id, r.c.position),
            order=("user_id", "position"),
            ids=("user_id",),
            numerics=("value", "value2"),
            hidden=("position",),
        ),
    ):
        versions[uid] = version
        if rule[0] is not None:
            rules.append((uid, *rule))
    return versions, rules


def _users(conn: Connection, within: _Within) -> Iterator[Any]:
    u = users_table
    return _rows(
        conn,
        _after_sort(
            select(u.c.id, u.c.base_currency, u.c.default_contribution)
            .where(within(u.c.id))
            .order_by(u.c.id),
            order=("id",),
            ids=("id",),
            numerics=("default_contribution",),
        ),
    )


def _classes(conn: Connection, within: _Within) -> list[tuple[Any, ...]]:
    c = asset_classes_table
    return [
        tuple(row)
        for row in _rows(
            conn,
            _after_sort(
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
            ),
        )
    ]


def _holdings(
    conn: Connection, within: _Within, prices: dict[str, tuple[Decimal, str, datetime]]
) -> tuple[list[tuple[Any, ...]], list[str]]:
    """The holdings' rows, priced from `prices`, and the market of each."""
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
    no_quote = (None, None, None)
    holdings = []
    markets = []
    # The class is joined on (user_id, id), the holdings' foreign key, and filtered by the
    # batch too, so that PostgreSQL reaches both tables through their user_id indexes.
    for uid, aid, market, symbol, name, quantity, currency in _rows(
        conn,
        _after_sort(
            select(
                h.c.user_id,
                a.c.rank,
                h.c.asset_id,
                a.c.market,
                a.c.symbol,
                c.c.name,
                h.c.quantity,
                a.c.currency,
            )
            .join(a, a.c.id == h.c.asset_id)
            .join(c, and_(c.c.user_id == h.c.user_id, c.c.id == h.c.asset_class_id))
            .where(within(h.c.user_id), within(c.c.user_id))
            .order_by(h.c.user_id, a.c.rank),
            order=("user_id", "rank"),
            ids=("user_id", "asset_id"),
            numerics=("quantity",),
            hidden=("rank",),
        ),
    ):
        quote = prices.get(aid, no_quote)
        holdings.append(
            (uid, aid, symbol, name, quantity, quote[1] or currency, quote[0], quote[2])
        )
        markets.append(market)
    return holdings, markets
