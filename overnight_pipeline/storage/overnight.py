"""What the overnight pipeline reads and writes per market-date partition.

Reads are set-based per batch of users; writes use COPY on PostgreSQL. Every function takes
a `Connection` and never commits: a batch is one transaction, so a retried or re-executed
step resumes after the last committed batch without duplicating anything.

Each read is one SQLAlchemy Core query for both dialects: a batch's ids are one array
parameter on PostgreSQL (`_among`), ids come back as text and numerics trimmed, both made by
the database (`_id_text`, `_trimmed`). A raw psycopg twin of `load_batch` is not worth
keeping: 1,000-user batches of a 10,000-user seeded database (`bench/load_batch_bench.py`,
alternating both paths per batch on the busy 2-core machine) load in 315-336 ms (median)
against 286-309 ms for the removed raw psycopg path and 850-960 ms for the SQLAlchemy path
it had beside it (UUID objects, a Python call per numeric, a batch's rows kept alive for the
garbage collector); docs/PERFORMANCE.md, "Scale-out" and "Figures once quoted in the code".
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import (
    Connection,
    Engine,
    Executable,
    String,
    Table,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    delete,
    func,
    select,
    text,
    union,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.functions import FunctionElement

from overnight_pipeline.core.batch import (
    CLASS_COLUMNS,
    HOLDING_COLUMNS,
    RULE_COLUMNS,
    USER_COLUMNS,
    Batch,
)
from overnight_pipeline.core.markets import Market, home_market
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.storage.bulk import copy_rows, copy_text, upsert
from overnight_pipeline.storage.db import dumps_json
from overnight_pipeline.storage.models import (
    asset_classes_table,
    asset_fundamentals_table,
    asset_prices_table,
    asset_scores_table,
    assets_table,
    calculation_assets_table,
    calculation_events_table,
    calculation_snapshots_table,
    criteria_rules_table,
    criteria_versions_table,
    exchange_rates_table,
    holdings_table,
    recommendations_table,
    users_table,
)
from overnight_pipeline.storage.partitions import month_of
from overnight_pipeline.storage.types import ExactDecimal

CHUNK = 1000


def _chunks(items: Sequence[Any], size: int = CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def correlation_id_for(root_run_id: str) -> uuid.UUID:
    """The calculation's correlation id: stable for a run, its retries and re-executions."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"overnight-run:{root_run_id}")


# What a partition's batches read and rewrite (`ensure_statistics`).
BATCH_TABLES = (
    "users",
    "asset_classes",
    "holdings",
    "assets",
    "criteria_versions",
    "criteria_rules",
    "asset_scores",
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


def partition_users(
    conn: Connection, *, market: str, day: date, markets: Mapping[str, Market]
) -> list[uuid.UUID]:
    """Active users whose home market on `day` is `market` (BEHAVIOUR §1), sorted by id."""
    h, a, u = holdings_table, assets_table, users_table
    rows = conn.execute(
        select(h.c.user_id, a.c.market)
        .distinct()
        .join(a, a.c.id == h.c.asset_id)
        .join(u, u.c.id == h.c.user_id)
        .where(u.c.active.is_(True))
    )
    configured: dict[uuid.UUID, set[str]] = {}
    for user_id, code in rows:
        if code in markets:
            configured.setdefault(user_id, set()).add(code)
    home: dict[frozenset[str], str] = {}
    chosen = []
    for user_id, codes in configured.items():
        key = frozenset(codes)
        if key not in home:
            home[key] = home_market([markets[c] for c in codes], day).code
        if home[key] == market:
            chosen.append(user_id)
    return sorted(chosen)


# Ids -------------------------------------------------------------------------------------
#
# A set of ids is one parameter: on PostgreSQL an array (`id = ANY(:ids)`; the engine never
# prepares, see `db.make_engine`, so each execution is planned for its own ids and reaches
# the table through its index or a hashed lookup), elsewhere an expanding IN, in chunks that
# stay under SQLite's limit on parameters.


def _among(column: ColumnElement[Any], ids: Sequence[Any], dialect: str) -> ColumnElement[bool]:
    """`column` is one of `ids`: an array parameter on PostgreSQL, an IN list elsewhere."""
    if dialect == "postgresql":
        return column == any_(bindparam(None, list(ids), type_=ARRAY(column.type)))
    return column.in_(list(ids))


def _id_chunks(conn: Connection, ids: Sequence[Any], size: int = 5000) -> Iterable[Sequence[Any]]:
    """`ids` in one piece on PostgreSQL, in pieces of `size` elsewhere."""
    if conn.dialect.name == "postgresql":
        return [ids] if ids else []
    return _chunks(ids, size)


class _id_text(FunctionElement[str]):
    """A UUID column as its canonical text (`8-4-4-4-12` lower-case hex), computed by the
    database: no UUID object per row. SQLite stores the 32 hex digits (SQLAlchemy's `Uuid`)."""

    type = String()
    inherit_cache = True
    name = "id_text"


@compiles(_id_text, "postgresql")
def _id_text_pg(element: _id_text, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST({compiler.process(element.clauses, **kw)} AS TEXT)"


@compiles(_id_text)
def _id_text_hex(element: _id_text, compiler: SQLCompiler, **kw: Any) -> str:
    x = compiler.process(element.clauses, **kw)
    parts = ((1, 8), (9, 4), (13, 4), (17, 4), (21, 12))
    return " || '-' || ".join(f"substr({x}, {at}, {n})" for at, n in parts)


class _trimmed(FunctionElement[Decimal]):
    """A NUMERIC column without the zeros its scale pads it with (3.5, not 3.5000000000),
    trimmed by the database, without a call per value (a batch reads 60,000). SQLite keeps
    the digits as written in plain notation (`ExactDecimal`): the zeros after the point go."""

    type = ExactDecimal()
    inherit_cache = True
    name = "trimmed"


@compiles(_trimmed, "postgresql")
def _trimmed_pg(element: _trimmed, compiler: SQLCompiler, **kw: Any) -> str:
    return f"trim_scale({compiler.process(element.clauses, **kw)})"


@compiles(_trimmed)
def _trimmed_text(element: _trimmed, compiler: SQLCompiler, **kw: Any) -> str:
    x = compiler.process(element.clauses, **kw)
    return f"CASE WHEN instr({x}, '.') > 0 THEN rtrim(rtrim({x}, '0'), '.') ELSE {x} END"


def partition_instruments(
    conn: Connection, user_ids: Sequence[uuid.UUID]
) -> dict[tuple[str, str], tuple[uuid.UUID, str]]:
    """Distinct assets held by `user_ids`: (market, symbol) → (asset id, currency)."""
    h, a = holdings_table, assets_table
    dialect = conn.dialect.name
    found: dict[tuple[str, str], tuple[uuid.UUID, str]] = {}
    for chunk in _id_chunks(conn, user_ids):
        held = select(h.c.asset_id).where(_among(h.c.user_id, chunk, dialect))
        rows = conn.execute(
            select(a.c.market, a.c.symbol, a.c.id, a.c.currency).where(a.c.id.in_(held))
        )
        found.update({(m, s): (i, c) for m, s, i, c in rows})
    return found


def partition_currencies(conn: Connection, user_ids: Sequence[uuid.UUID]) -> set[str]:
    """Base currencies of `user_ids` and currencies of the assets they hold."""
    h, a, u = holdings_table, assets_table, users_table
    dialect = conn.dialect.name
    found: set[str] = set()
    for chunk in _id_chunks(conn, user_ids):
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
        select(r.c.quote, _trimmed(r.c.rate), r.c.rate_date, r.c.as_of).join(
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
    for chunk in _id_chunks(conn, asset_ids):
        latest = (
            select(p.c.asset_id, func.max(p.c.price_date).label("price_date"))
            .where(p.c.price_date <= day, _among(p.c.asset_id, chunk, dialect))
            .group_by(p.c.asset_id)
            .subquery()
        )
        rows = conn.execute(
            select(
                _id_text(p.c.asset_id), _trimmed(p.c.price), p.c.currency, p.c.as_of, p.c.price_date
            ).join(
                latest,
                and_(p.c.asset_id == latest.c.asset_id, p.c.price_date == latest.c.price_date),
            )
        )
        for aid, price, currency, as_of, price_date in rows:
            prices[aid] = (price, currency, as_of)
            stale += price_date < day
    return MarketSnapshot(prices, _fundamentals(conn, asset_ids, day=day), stale)


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
    per row."""
    for part in conn.execute(statement).partitions(_SLICE):
        yield from part


_SLICE = 500


@contextmanager
def snapshot_reads(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one committed state of the database, for everything
    a batch reads (`load_batch`): a concurrent `overnight load` is seen whole or not at all.

    PostgreSQL: one `REPEATABLE READ`, `READ ONLY` transaction (its snapshot is taken by the
    first statement; both modes are reset when the connection goes back to the pool).
    SQLite: one deferred transaction, begun explicitly because the driver runs each SELECT
    outside any transaction; in WAL mode its first read fixes the snapshot and writers go on.
    Rolled back at the end: it only reads."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()


def load_batch(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, snapshot: MarketSnapshot
) -> LoadedBatch:
    """The core's batch frames for `user_ids`, priced from `snapshot`; rules are each user's
    active criteria version. Ids are strings, numerics as written (`_trimmed`). Read it on a
    `snapshot_reads` connection, or its statements may see different committed states.

    Four queries, each table reached through its user_id index; ids come back as text made
    by the database (`_id_text`) and rows are unpacked as tuples: UUID objects, named row
    access and a per-value type hook were most of a batch's load time."""
    u, c, h, a = users_table, asset_classes_table, holdings_table, assets_table
    v, r = criteria_versions_table, criteria_rules_table
    n = criteria_versions_table.alias("n")
    dialect = conn.dialect.name
    ids = list(user_ids)
    # Each result is consumed as it is read, in slices (`_rows`), into the frames' tuples.
    newest = select(func.max(n.c.version)).where(n.c.user_id == v.c.user_id).scalar_subquery()
    versions: dict[Any, int | None] = {}
    rules = []
    for uid, version, *rule in _rows(
        conn,
        select(
            _id_text(v.c.user_id),
            v.c.version,
            r.c.rule_id,
            r.c.asset_class,
            r.c.metric,
            r.c.operator,
            _trimmed(r.c.value),
            _trimmed(r.c.value2),
            r.c.points,
        )
        .outerjoin(r, r.c.criteria_version_id == v.c.id)
        .where(_among(v.c.user_id, ids, dialect), v.c.version == newest)
        .order_by(v.c.user_id, r.c.position),
    ):
        versions[uid] = version
        if rule[0] is not None:
            rules.append((uid, *rule))
    users = [
        (uid, base, contribution, versions.get(uid))
        for uid, base, contribution in _rows(
            conn,
            select(_id_text(u.c.id), u.c.base_currency, _trimmed(u.c.default_contribution))
            .where(_among(u.c.id, ids, dialect))
            .order_by(u.c.id),
        )
    ]
    classes = [
        tuple(row)
        for row in _rows(
            conn,
            select(
                _id_text(c.c.user_id),
                c.c.name,
                _trimmed(c.c.target_min),
                _trimmed(c.c.target_max),
                c.c.max_assets,
                _trimmed(c.c.min_allocation_value),
            )
            .where(_among(c.c.user_id, ids, dialect))
            .order_by(c.c.user_id, c.c.position, c.c.name),
        )
    ]
    prices = snapshot.prices
    no_quote = (None, None, None)
    holdings = []
    markets = []
    # The class is joined on (user_id, id), the holdings' foreign key, and filtered by the
    # batch too, so that PostgreSQL reaches both tables through their user_id indexes.
    for uid, aid, market, symbol, name, quantity, currency in _rows(
        conn,
        select(
            _id_text(h.c.user_id),
            _id_text(h.c.asset_id),
            a.c.market,
            a.c.symbol,
            c.c.name,
            _trimmed(h.c.quantity),
            a.c.currency,
        )
        .join(a, a.c.id == h.c.asset_id)
        .join(c, and_(c.c.user_id == h.c.user_id, c.c.id == h.c.asset_class_id))
        .where(_among(h.c.user_id, ids, dialect), _among(c.c.user_id, ids, dialect))
        .order_by(h.c.user_id, a.c.market, a.c.symbol),
    ):
        quote = prices.get(aid, no_quote)
        holdings.append(
            (uid, aid, symbol, name, quantity, quote[1] or currency, quote[0], quote[2])
        )
        markets.append(market)
    batch = Batch(
        users=_frame(users, list(USER_COLUMNS)),
        classes=_frame(classes, list(CLASS_COLUMNS)),
        holdings=_frame(holdings, list(HOLDING_COLUMNS)),
        rules=_frame(rules, list(RULE_COLUMNS)),
        fundamentals=snapshot.fundamentals,
    )
    return LoadedBatch(batch, versions, markets)


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
    for chunk in _id_chunks(conn, asset_ids):
        rows = conn.execute(
            select(_id_text(f.c.asset_id), *(_trimmed(f.c[m]) for m in METRICS)).where(
                _among(f.c.asset_id, chunk, dialect), f.c.fundamentals_date == newest
            )
        )
        data.extend(tuple(row) for row in rows)
    return _frame(data, ["asset_id", *METRICS]).set_index("asset_id")


# Events ---------------------------------------------------------------------------------


def users_with_event(
    conn: Connection, *, correlation_id: uuid.UUID, event_type: str
) -> set[uuid.UUID]:
    e = calculation_events_table
    return set(
        conn.scalars(
            select(e.c.user_id).where(
                e.c.correlation_id == correlation_id, e.c.event_type == event_type
            )
        )
    )


# COPY's text format: a backslash, tab, newline or carriage return inside a value is escaped.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _esc(value: str) -> str:
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def _esc_json(text: str) -> str:
    """JSON text for COPY: orjson's output has no raw control characters, only backslashes
    (one C-level scan); anything else is escaped in full."""
    if "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text.replace("\\", "\\\\")


@dataclass(frozen=True)
class Rows:
    """Rows made ready for one bulk write: COPY text lines on PostgreSQL, parameter tuples
    elsewhere. Made on the computing thread, so that the writer thread only sends them."""

    table: Table
    columns: tuple[str, ...]
    lines: list[str] | None = None
    rows: list[tuple[Any, ...]] | None = None


def write_rows(conn: Connection, prepared: Rows) -> None:
    if prepared.lines is not None:
        copy_text(conn, prepared.table, prepared.columns, prepared.lines)
    elif prepared.rows:
        copy_rows(conn, prepared.table, prepared.columns, prepared.rows)


EVENT_COLUMNS = (
    "correlation_id",
    "user_id",
    "event_type",
    "payload",
    "created_at",
    "calculated_at",
)


def event_rows(
    dialect: str,
    events: Sequence[tuple[uuid.UUID, Any, str, Any]],
    *,
    at: datetime,
    calculated_at: datetime,
) -> Rows:
    """(correlation id, user id, type, payload as JSON text or a dict) events written `at`,
    of calculations started `calculated_at` (their partition key, `storage.partitions`)."""
    texts = [
        (cid, str(uid), kind, p if isinstance(p, str) else dumps_json(p))
        for cid, uid, kind, p in events
    ]
    if dialect == "postgresql":
        tail = f"\t{at.isoformat()}\t{calculated_at.isoformat()}\n"
        return Rows(
            calculation_events_table,
            EVENT_COLUMNS,
            lines=[
                f"{cid}\t{_esc(uid)}\t{_esc(kind)}\t{_esc_json(p)}{tail}"
                for cid, uid, kind, p in texts
            ],
        )
    return Rows(
        calculation_events_table,
        EVENT_COLUMNS,
        rows=[(c, uuid.UUID(u), k, orjson.loads(p), at, calculated_at) for c, u, k, p in texts],
    )


SCORE_COLUMNS = (
    "user_id",
    "asset_id",
    "market",
    "score",
    "max_possible_score",
    "criteria_version",
    "breakdown",
    "market_date",
    "correlation_id",
    "computed_at",
)
ScoreRow = tuple[str, str, str, str, str, int, str]


def score_rows(
    dialect: str,
    rows: Sequence[ScoreRow],
    *,
    day: date,
    correlation_id: uuid.UUID,
    computed_at: datetime,
) -> Rows:
    """`asset_scores` rows from (user id, asset id, market, score, max possible score,
    criteria version, breakdown JSON text): ids as UUID text, scores as Decimal text."""
    if dialect == "postgresql":
        tail = f"\t{day.isoformat()}\t{correlation_id}\t{computed_at.isoformat()}\n"
        return Rows(
            asset_scores_table,
            SCORE_COLUMNS,
            lines=[
                f"{u}\t{a}\t{_esc(m)}\t{sc}\t{mx}\t{v}\t{_esc_json(b)}{tail}"
                for u, a, m, sc, mx, v, b in rows
            ],
        )
    return Rows(
        asset_scores_table,
        SCORE_COLUMNS,
        rows=[
            (
                uuid.UUID(u),
                uuid.UUID(a),
                m,
                sc,
                mx,
                v,
                orjson.loads(b),
                day,
                correlation_id,
                computed_at,
            )
            for u, a, m, sc, mx, v, b in rows
        ],
    )


def replace_scores(
    conn: Connection, prepared: Rows, *, user_ids: Sequence[uuid.UUID], day: date
) -> None:
    """`asset_scores` holds each user's current scores: the rows of `user_ids` from `day` or
    before are replaced by `prepared`; a user whose rows are of a later day (this is a
    backfill) keeps them."""
    s = asset_scores_table
    dialect = conn.dialect.name
    newer: set[str] = set()
    for chunk in _id_chunks(conn, user_ids, CHUNK):
        newer.update(
            conn.scalars(
                select(_id_text(s.c.user_id))
                .distinct()
                .where(_among(s.c.user_id, chunk, dialect), s.c.market_date > day)
            )
        )
        conn.execute(delete(s).where(_among(s.c.user_id, chunk, dialect), s.c.market_date <= day))
    if newer and prepared.lines is not None:
        prepared = Rows(
            prepared.table,
            prepared.columns,
            lines=[line for line in prepared.lines if line[:36] not in newer],
        )
    elif newer and prepared.rows is not None:
        prepared = Rows(
            prepared.table,
            prepared.columns,
            rows=[row for row in prepared.rows if str(row[0]) not in newer],
        )
    write_rows(conn, prepared)


def insert_snapshot(
    conn: Connection, *, key: str, kind: str, payload: dict[str, Any], calculated_at: datetime
) -> None:
    """Store a snapshot once per month of the calculations that reference it."""
    insert_snapshots(conn, kind=kind, payloads={key: payload}, calculated_at=calculated_at)


def insert_snapshots(
    conn: Connection, *, kind: str, payloads: Mapping[str, Any], calculated_at: datetime
) -> int:
    """Store the snapshots `payloads` (hash → payload) in the month of `calculated_at` unless
    they are there: a snapshot is immutable and keyed by its content's hash, so an existing
    row (another shard's, an earlier night's of the month) is the same and is left alone.
    Those already there are looked up first (one query), so a night that reuses the month's
    snapshots writes nothing. Returns how many were inserted."""
    t = calculation_snapshots_table
    month = month_of(calculated_at)
    wanted = sorted(payloads)
    present: set[str] = set()
    for start in range(0, len(wanted), CHUNK):
        chunk = wanted[start : start + CHUNK]
        present.update(
            conn.scalars(select(t.c.hash).where(t.c.month == month, t.c.hash.in_(chunk)))
        )
    rows = [
        {"hash": key, "month": month, "kind": kind, "payload": payloads[key]}
        for key in wanted
        if key not in present
    ]
    if rows:
        upsert(conn, t, rows, key=["hash", "month"], update=[])
    return len(rows)


def snapshots(conn: Connection, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
    """hash → payload of the snapshots `keys` (those that exist; the copies a hash has in
    several months are the same content)."""
    t = calculation_snapshots_table
    wanted = sorted(set(keys))
    if not wanted:
        return {}
    return dict(conn.execute(select(t.c.hash, t.c.payload).where(t.c.hash.in_(wanted))).all())


CALCULATION_ASSET_COLUMNS = ("asset_id", "user_id", "score", "correlation_id", "calculated_at")


def calculation_asset_rows(
    dialect: str,
    rows: Sequence[tuple[str, str, str]],
    *,
    correlation_id: uuid.UUID,
    calculated_at: datetime,
) -> Rows:
    """The asset-X audit index from (asset id, user id, score) as text."""
    if dialect == "postgresql":
        tail = f"\t{correlation_id}\t{calculated_at.isoformat()}\n"
        return Rows(
            calculation_assets_table,
            CALCULATION_ASSET_COLUMNS,
            lines=[f"{a}\t{u}\t{sc}{tail}" for a, u, sc in rows],
        )
    return Rows(
        calculation_assets_table,
        CALCULATION_ASSET_COLUMNS,
        rows=[(uuid.UUID(a), uuid.UUID(u), sc, correlation_id, calculated_at) for a, u, sc in rows],
    )


def upsert_recommendations(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """One row per (user, market_date): a new calculation replaces the old one, unless the
    stored row was generated later (a nightly batch and a same-day recalculation of the
    same user and date, finishing in either order: the result of the newer inputs stays)."""
    upsert(
        conn,
        recommendations_table,
        rows,
        key=["user_id", "market_date"],
        update=[
            "market",
            "correlation_id",
            "generated_at",
            "base_currency",
            "total_investable",
            "criteria_version",
            "payload",
            "portfolio",
        ],
        newer="generated_at",
    )


def recommendations_for(
    conn: Connection, *, user_ids: Sequence[uuid.UUID], day: date, as_text: bool = False
) -> list[Any]:
    """The persisted rows of `user_ids` on `day` (by primary key); with `as_text`, the two
    documents as the JSON text the database holds (for the cache: no parse and re-encode,
    much of the cache step's time; docs/PERFORMANCE.md, "Scale-out")."""
    r = recommendations_table
    dialect = conn.dialect.name
    payload: ColumnElement[Any] = r.c.payload
    portfolio: ColumnElement[Any] = r.c.portfolio
    if as_text:
        payload = cast(payload, Text).label("payload")
        portfolio = cast(portfolio, Text).label("portfolio")
    out: list[Any] = []
    for chunk in _id_chunks(conn, user_ids, CHUNK):
        out.extend(
            conn.execute(
                select(
                    r.c.user_id,
                    r.c.market_date,
                    r.c.generated_at,
                    r.c.total_investable,
                    r.c.correlation_id,
                    payload,
                    portfolio,
                ).where(_among(r.c.user_id, chunk, dialect), r.c.market_date == day)
            )
        )
    return out


# Replay (a sample of a calculation's users) ------------------------------------------------


def users_with_recommendation(
    conn: Connection, *, correlation_id: uuid.UUID, day: date
) -> set[str]:
    """Users whose persisted recommendation row on `day` is the calculation's."""
    r = recommendations_table
    return {
        str(u)
        for u in conn.scalars(
            select(r.c.user_id).where(r.c.correlation_id == correlation_id, r.c.market_date == day)
        )
    }


def event_payloads(
    conn: Connection,
    *,
    correlation_id: uuid.UUID,
    event_type: str,
    user_ids: Sequence[uuid.UUID],
) -> list[tuple[str, dict[str, Any]]]:
    """(user id as text, payload) of one event type of `user_ids`, by user id."""
    e = calculation_events_table
    dialect = conn.dialect.name
    out: list[tuple[str, dict[str, Any]]] = []
    for chunk in _id_chunks(conn, user_ids, CHUNK):
        rows = conn.execute(
            select(_id_text(e.c.user_id), e.c.payload)
            .where(
                e.c.correlation_id == correlation_id,
                e.c.event_type == event_type,
                _among(e.c.user_id, chunk, dialect),
            )
            .order_by(e.c.user_id)
        )
        out.extend((user_id, payload) for user_id, payload in rows)
    return out


def scores_of(
    conn: Connection, *, user_ids: Sequence[uuid.UUID]
) -> dict[str, tuple[set[uuid.UUID], dict[str, tuple[Decimal, Decimal]]]]:
    """user id → (the calculations its rows are from, asset id → (score, max possible
    score)): each user's current rows in `asset_scores`."""
    s = asset_scores_table
    dialect = conn.dialect.name
    out: dict[str, tuple[set[uuid.UUID], dict[str, tuple[Decimal, Decimal]]]] = {}
    for chunk in _id_chunks(conn, user_ids, CHUNK):
        rows = conn.execute(
            select(
                _id_text(s.c.user_id),
                _id_text(s.c.asset_id),
                s.c.score,
                s.c.max_possible_score,
                s.c.correlation_id,
            ).where(_among(s.c.user_id, chunk, dialect))
        )
        for user_id, asset_id, score, top, cid in rows:
            found = out.setdefault(user_id, (set(), {}))
            found[0].add(cid)
            found[1][asset_id] = (score, top)
    return out
