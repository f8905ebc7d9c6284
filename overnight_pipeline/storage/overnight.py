"""What the overnight pipeline reads and writes per market-date partition.

Reads are set-based per batch of users; writes use COPY on PostgreSQL. Every function takes
a `Connection` and never commits: a batch is one transaction, so a retried or re-executed
step resumes after the last committed batch without duplicating anything.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

import orjson
import pandas as pd
from sqlalchemy import Connection, Table, and_, delete, func, select

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
    criteria_rules_table,
    criteria_versions_table,
    exchange_rates_table,
    holdings_table,
    recommendations_table,
    users_table,
)

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
    ids)` matches every row and scans the whole table for each batch: 0.8 s a batch at
    100,000 users instead of 0.15 s. ANALYZE samples each table once (≈ 0.7 s in all at
    100,000 users) and blocks neither reads nor writes. No-op elsewhere and on tables that
    have statistics (autovacuum keeps those fresh)."""
    if conn.dialect.name != "postgresql":
        return []
    missing = [
        name
        for (name,) in _pg_rows(
            conn,
            "SELECT c.relname FROM pg_class c WHERE c.relname = ANY(%(names)s)"
            " AND c.relkind = 'r' AND c.relnamespace = current_schema()::regnamespace"
            " AND c.reltuples < 0",
            {"names": list(tables)},
        )
    ]
    with _driver(conn).cursor() as cur:
        for name in missing:
            cur.execute(f'ANALYZE "{name}"')
    return missing


def partition_users(
    conn: Connection, *, market: str, day: date, markets: Mapping[str, Market]
) -> list[uuid.UUID]:
    """Active users whose home market on `day` is `market` (SPEC §1), sorted by id."""
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


# On PostgreSQL the partition's whole user list goes in one array, inline (see `_driver`):
# 20 chunks of 5,000 ids as prepared IN lists took 2-5 s per step at 100,000 users.
_PG_INSTRUMENTS = """SELECT a.market, a.symbol, a.id::text, a.currency FROM assets a
WHERE a.id IN (SELECT h.asset_id FROM holdings h WHERE h.user_id = ANY(%(ids)s::uuid[]))"""
_PG_CURRENCIES = """SELECT base_currency FROM users WHERE id = ANY(%(ids)s::uuid[])
UNION SELECT a.currency FROM assets a
WHERE a.id IN (SELECT h.asset_id FROM holdings h WHERE h.user_id = ANY(%(ids)s::uuid[]))"""


def _pg_rows(conn: Connection, query: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
    with _driver(conn).cursor() as cur:
        rows: list[tuple[Any, ...]] = cur.execute(query, params, prepare=False).fetchall()
    return rows


def partition_instruments(
    conn: Connection, user_ids: Sequence[uuid.UUID]
) -> dict[tuple[str, str], tuple[uuid.UUID, str]]:
    """Distinct assets held by `user_ids`: (market, symbol) → (asset id, currency)."""
    h, a = holdings_table, assets_table
    found: dict[tuple[str, str], tuple[uuid.UUID, str]] = {}
    if conn.dialect.name == "postgresql":
        held = _pg_rows(conn, _PG_INSTRUMENTS, {"ids": [str(u) for u in user_ids]})
        return {(m, s): (uuid.UUID(i), c) for m, s, i, c in held}
    for chunk in _chunks(user_ids, 5000):
        rows = conn.execute(
            select(a.c.market, a.c.symbol, a.c.id, a.c.currency)
            .distinct()
            .join(h, h.c.asset_id == a.c.id)
            .where(h.c.user_id.in_(chunk))
        )
        found.update({(m, s): (i, c) for m, s, i, c in rows})
    return found


def partition_currencies(conn: Connection, user_ids: Sequence[uuid.UUID]) -> set[str]:
    """Base currencies of `user_ids` and currencies of the assets they hold."""
    h, a, u = holdings_table, assets_table, users_table
    found: set[str] = set()
    if conn.dialect.name == "postgresql":
        return {c for (c,) in _pg_rows(conn, _PG_CURRENCIES, {"ids": [str(u) for u in user_ids]})}
    for chunk in _chunks(user_ids, 5000):
        found.update(conn.scalars(select(u.c.base_currency).distinct().where(u.c.id.in_(chunk))))
        found.update(
            conn.scalars(
                select(a.c.currency)
                .distinct()
                .join(h, h.c.asset_id == a.c.id)
                .where(h.c.user_id.in_(chunk))
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
        select(r.c.quote, r.c.rate, r.c.rate_date, r.c.as_of).join(
            newest,
            and_(
                r.c.quote == newest.c.quote, r.c.rate_date == newest.c.rate_date, r.c.base == "USD"
            ),
        )
    ).all()
    usd_to = {q: _plain(rate) for q, rate, _, _ in rows if q != "USD"}
    as_of = min((row.as_of for row in rows), default=None)
    stale = any(row.rate_date < day for row in rows)
    return FxRates(usd_to=usd_to, as_of=as_of, stale=stale)


@lru_cache(maxsize=65_536)
def _plain(value: Decimal) -> Decimal:
    """NUMERIC(28, n) pads with zeros; give values back as written (3.5, not 3.5000000000)."""
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if normal == normal.to_integral() else normal


def _plain_or_none(value: Decimal | None) -> Decimal | None:
    return None if value is None else _plain(value)


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
    newest = (
        select(p.c.asset_id, func.max(p.c.price_date).label("price_date"))
        .where(p.c.price_date <= day)
        .group_by(p.c.asset_id)
    )
    prices: dict[str, tuple[Decimal, str, datetime]] = {}
    stale = 0
    for chunk in _chunks(list(asset_ids), 5000):
        latest = newest.where(p.c.asset_id.in_(chunk)).subquery()
        rows = conn.execute(
            select(p.c.asset_id, p.c.price, p.c.currency, p.c.as_of, p.c.price_date).join(
                latest,
                and_(p.c.asset_id == latest.c.asset_id, p.c.price_date == latest.c.price_date),
            )
        )
        for row in rows:
            prices[str(row.asset_id)] = (_plain(row.price), row.currency, row.as_of)
            stale += row.price_date < day
    return MarketSnapshot(prices, _fundamentals(conn, list(asset_ids), day=day), stale)


@dataclass(frozen=True)
class LoadedBatch:
    batch: Batch
    criteria_versions: dict[Any, int | None]
    holding_markets: list[str]


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns, dtype=object)


def load_batch(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, snapshot: MarketSnapshot
) -> LoadedBatch:
    """The core's batch frames for `user_ids`, priced from `snapshot`; rules are each user's
    active criteria version. Ids are strings.

    On PostgreSQL: four plain psycopg queries that return ids as text and numerics already
    trimmed (`trim_scale`, what `_plain` does), ≈ 5× the SQLAlchemy rows of the portable
    path below (UUID objects, Row objects and the Decimal clean-up were most of a batch's
    load time); both give the same frames (tested)."""
    if conn.dialect.name == "postgresql":
        return _load_batch_pg(conn, user_ids, snapshot=snapshot)
    return load_batch_portable(conn, user_ids, snapshot=snapshot)


# Every table is reached through its user_id index (the batch's ids inline, see `_driver`),
# ordered by the uuid columns themselves (not their ::text output, a collation sort).
_PG_USERS = """SELECT u.id::text, u.base_currency, trim_scale(u.default_contribution)
FROM users u WHERE u.id = ANY(%(ids)s::uuid[]) ORDER BY u.id"""
_PG_CLASSES = """SELECT c.user_id::text, c.name, trim_scale(c.target_min),
       trim_scale(c.target_max), c.max_assets, trim_scale(c.min_allocation_value)
FROM asset_classes c WHERE c.user_id = ANY(%(ids)s::uuid[])
ORDER BY c.user_id, c.position, c.name"""
_PG_HOLDINGS = """SELECT h.user_id::text, h.asset_id::text, a.market, a.symbol, c.name,
       trim_scale(h.quantity), a.currency
FROM holdings h JOIN assets a ON a.id = h.asset_id
JOIN asset_classes c ON c.user_id = h.user_id AND c.id = h.asset_class_id
WHERE h.user_id = ANY(%(ids)s::uuid[]) AND c.user_id = ANY(%(ids)s::uuid[])
ORDER BY h.user_id, a.market, a.symbol"""
_PG_RULES = """SELECT v.user_id::text, v.version, r.rule_id, r.asset_class, r.metric,
       r.operator, trim_scale(r.value), trim_scale(r.value2), r.points
FROM criteria_versions v LEFT JOIN criteria_rules r ON r.criteria_version_id = v.id
WHERE v.user_id = ANY(%(ids)s::uuid[])
  AND v.version = (SELECT max(n.version) FROM criteria_versions n WHERE n.user_id = v.user_id)
ORDER BY v.user_id, r.position"""


def _driver(conn: Connection) -> Any:
    """The psycopg connection under `conn` (PostgreSQL only).

    Its batch statements run with `prepare=False`: psycopg prepares a statement from its
    sixth execution on, and PostgreSQL's generic plan of `user_id = ANY($1)` searches the
    array linearly for every row of a scan, planned while the table was still small (the
    DELETE of `replace_scores` took 0.8 s a batch at 10,000 users that way, growing with
    the table). With the array inline each batch gets an index or hashed lookup."""
    raw = conn.connection.driver_connection
    assert raw is not None
    return raw


def _load_batch_pg(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, snapshot: MarketSnapshot
) -> LoadedBatch:
    params = {"ids": [str(u) for u in user_ids]}
    with _driver(conn).cursor() as cur:
        users = cur.execute(_PG_USERS, params, prepare=False).fetchall()
        classes = cur.execute(_PG_CLASSES, params, prepare=False).fetchall()
        holdings = cur.execute(_PG_HOLDINGS, params, prepare=False).fetchall()
        rule_rows = cur.execute(_PG_RULES, params, prepare=False).fetchall()
    versions: dict[Any, int | None] = {}
    rules = []
    for uid, version, rule_id, *rest in rule_rows:
        versions[uid] = version
        if rule_id is not None:
            rules.append((uid, rule_id, *rest))
    prices = snapshot.prices
    no_quote = (None, None, None)
    holding_rows = []
    for uid, aid, _market, symbol, name, quantity, currency in holdings:
        quote = prices.get(aid, no_quote)
        holding_rows.append(
            (uid, aid, symbol, name, quantity, quote[1] or currency, quote[0], quote[2])
        )
    batch = Batch(
        users=_frame(
            [(uid, base, contribution, versions.get(uid)) for uid, base, contribution in users],
            list(USER_COLUMNS),
        ),
        classes=_frame(classes, list(CLASS_COLUMNS)),
        holdings=_frame(holding_rows, list(HOLDING_COLUMNS)),
        rules=_frame(rules, list(RULE_COLUMNS)),
        fundamentals=snapshot.fundamentals,
    )
    return LoadedBatch(batch, versions, [r[2] for r in holdings])


def load_batch_portable(
    conn: Connection, user_ids: Sequence[uuid.UUID], *, snapshot: MarketSnapshot
) -> LoadedBatch:
    """`load_batch` through SQLAlchemy Core (SQLite, and the reference for the PostgreSQL
    path)."""
    u, c, h, a = users_table, asset_classes_table, holdings_table, assets_table
    ids = list(user_ids)
    users = conn.execute(
        select(u.c.id, u.c.base_currency, u.c.default_contribution)
        .where(u.c.id.in_(ids))
        .order_by(u.c.id)
    ).all()
    classes = conn.execute(
        select(
            c.c.user_id,
            c.c.name,
            c.c.target_min,
            c.c.target_max,
            c.c.max_assets,
            c.c.min_allocation_value,
        )
        .where(c.c.user_id.in_(ids))
        .order_by(c.c.user_id, c.c.position, c.c.name)
    ).all()
    holdings = conn.execute(
        select(
            h.c.user_id, h.c.asset_id, a.c.market, a.c.symbol, c.c.name, h.c.quantity, a.c.currency
        )
        .join(a, a.c.id == h.c.asset_id)
        .join(c, c.c.id == h.c.asset_class_id)
        .where(h.c.user_id.in_(ids))
        .order_by(h.c.user_id, a.c.market, a.c.symbol)
    ).all()
    versions, rules = _active_rules(conn, ids)
    prices = snapshot.prices
    holding_rows = []
    for r in holdings:
        aid = str(r.asset_id)
        quote = prices.get(aid)
        holding_rows.append(
            (
                str(r.user_id),
                aid,
                r.symbol,
                r.name,
                _plain(r.quantity),
                r.currency if quote is None else quote[1],
                None if quote is None else quote[0],
                None if quote is None else quote[2],
            )
        )
    batch = Batch(
        users=_frame(
            [
                (
                    str(r.id),
                    r.base_currency,
                    _plain_or_none(r.default_contribution),
                    versions.get(str(r.id)),
                )
                for r in users
            ],
            ["user_id", "base_currency", "contribution", "criteria_version"],
        ),
        classes=_frame(
            [
                (
                    str(r.user_id),
                    r.name,
                    _plain(r.target_min),
                    _plain(r.target_max),
                    r.max_assets,
                    _plain_or_none(r.min_allocation_value),
                )
                for r in classes
            ],
            ["user_id", "name", "target_min", "target_max", "max_assets", "min_allocation_value"],
        ),
        holdings=_frame(
            holding_rows,
            [
                "user_id",
                "asset_id",
                "symbol",
                "asset_class",
                "quantity",
                "currency",
                "price",
                "price_as_of",
            ],
        ),
        rules=_frame(
            rules,
            ["user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points"],
        ),
        fundamentals=snapshot.fundamentals,
    )
    return LoadedBatch(batch, versions, [r.market for r in holdings])


def _active_rules(
    conn: Connection, user_ids: list[uuid.UUID]
) -> tuple[dict[Any, int | None], list[tuple[Any, ...]]]:
    v, r = criteria_versions_table, criteria_rules_table
    newest = (
        select(v.c.user_id, func.max(v.c.version).label("version"))
        .where(v.c.user_id.in_(user_ids))
        .group_by(v.c.user_id)
        .subquery()
    )
    rows = conn.execute(
        select(
            v.c.user_id,
            v.c.version,
            r.c.rule_id,
            r.c.asset_class,
            r.c.metric,
            r.c.operator,
            r.c.value,
            r.c.value2,
            r.c.points,
        )
        .join(newest, and_(newest.c.user_id == v.c.user_id, newest.c.version == v.c.version))
        .outerjoin(r, r.c.criteria_version_id == v.c.id)
        .order_by(v.c.user_id, r.c.position)
    ).all()
    versions: dict[Any, int | None] = {}
    rules = []
    for row in rows:
        uid = str(row.user_id)
        versions[uid] = row.version
        if row.rule_id is not None:
            rules.append(
                (
                    uid,
                    row.rule_id,
                    row.asset_class,
                    row.metric,
                    row.operator,
                    _plain_or_none(row.value),
                    _plain_or_none(row.value2),
                    row.points,
                )
            )
    return versions, rules


def _fundamentals(conn: Connection, asset_ids: list[uuid.UUID], *, day: date) -> pd.DataFrame:
    f = asset_fundamentals_table
    f2 = asset_fundamentals_table.alias("f2")
    newest = (
        select(func.max(f2.c.fundamentals_date))
        .where(f2.c.asset_id == f.c.asset_id, f2.c.fundamentals_date <= day)
        .scalar_subquery()
    )
    data: list[tuple[Any, ...]] = []
    for chunk in _chunks(asset_ids, 5000):
        rows = conn.execute(
            select(f.c.asset_id, *(f.c[m] for m in METRICS)).where(
                f.c.asset_id.in_(chunk), f.c.fundamentals_date == newest
            )
        )
        data.extend((str(row[0]), *(_plain_or_none(x) for x in row[1:])) for row in rows)
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


def captured_inputs(
    conn: Connection, *, correlation_id: uuid.UUID, user_ids: Sequence[uuid.UUID]
) -> list[tuple[str, dict[str, Any]]]:
    """(user id as text, `INPUTS_CAPTURED` payload) of `user_ids`, by user id. On PostgreSQL
    one query per 1,000 users fetches the payloads as text for orjson (no SQLAlchemy rows)."""
    e = calculation_events_table
    out: list[tuple[str, dict[str, Any]]] = []
    if conn.dialect.name == "postgresql":
        with _driver(conn).cursor() as cur:
            for chunk in _chunks(user_ids):
                cur.execute(
                    _PG_CAPTURED,
                    {"cid": correlation_id, "ids": [str(u) for u in chunk]},
                    prepare=False,
                )
                out.extend((uid, orjson.loads(text)) for uid, text in cur)
        return out
    for chunk in _chunks(user_ids):
        out.extend(
            (str(row.user_id), row.payload)
            for row in conn.execute(
                select(e.c.user_id, e.c.payload)
                .where(
                    e.c.correlation_id == correlation_id,
                    e.c.event_type == "INPUTS_CAPTURED",
                    e.c.user_id.in_(chunk),
                )
                .order_by(e.c.user_id)
            )
        )
    return out


_PG_CAPTURED = """SELECT user_id::text, payload::text FROM calculation_events
WHERE correlation_id = %(cid)s AND event_type = 'INPUTS_CAPTURED'
  AND user_id = ANY(%(ids)s::uuid[]) ORDER BY user_id"""

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


EVENT_COLUMNS = ("correlation_id", "user_id", "event_type", "payload", "created_at")


def event_rows(
    dialect: str, events: Sequence[tuple[uuid.UUID, Any, str, Any]], *, at: datetime
) -> Rows:
    """(correlation id, user id, type, payload as JSON text or a dict) events."""
    texts = [
        (cid, str(uid), kind, p if isinstance(p, str) else dumps_json(p))
        for cid, uid, kind, p in events
    ]
    if dialect == "postgresql":
        stamp = at.isoformat()
        return Rows(
            calculation_events_table,
            EVENT_COLUMNS,
            lines=[
                f"{cid}\t{_esc(uid)}\t{_esc(kind)}\t{_esc_json(p)}\t{stamp}\n"
                for cid, uid, kind, p in texts
            ],
        )
    return Rows(
        calculation_events_table,
        EVENT_COLUMNS,
        rows=[(c, uuid.UUID(u), k, orjson.loads(p), at) for c, u, k, p in texts],
    )


def append_events(
    conn: Connection, events: Sequence[tuple[uuid.UUID, Any, str, Any]], *, at: datetime
) -> None:
    """(correlation id, user id, type, payload) rows; payload already JSON text or a dict."""
    write_rows(conn, event_rows(conn.dialect.name, events, at=at))


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


def delete_scores(conn: Connection, *, user_ids: Sequence[uuid.UUID], day: date) -> None:
    """The `asset_scores` of `user_ids` on `day` (a new calculation replaces them)."""
    s = asset_scores_table
    if conn.dialect.name == "postgresql":
        with _driver(conn).cursor() as cur:
            cur.execute(
                "DELETE FROM asset_scores WHERE market_date = %(day)s"
                " AND user_id = ANY(%(ids)s::uuid[])",
                {"day": day, "ids": [str(u) for u in user_ids]},
                prepare=False,
            )
        return
    for chunk in _chunks(user_ids):
        conn.execute(delete(s).where(s.c.market_date == day, s.c.user_id.in_(chunk)))


def replace_scores(
    conn: Connection,
    rows: Sequence[ScoreRow],
    *,
    user_ids: Sequence[uuid.UUID],
    day: date,
    correlation_id: uuid.UUID,
    computed_at: datetime,
) -> None:
    """Replace the `asset_scores` of `user_ids` on `day` with `rows` (see `score_rows`)."""
    delete_scores(conn, user_ids=user_ids, day=day)
    write_rows(
        conn,
        score_rows(
            conn.dialect.name, rows, day=day, correlation_id=correlation_id, computed_at=computed_at
        ),
    )


CALCULATION_ASSET_COLUMNS = ("asset_id", "user_id", "score", "correlation_id", "created_at")


def calculation_asset_rows(
    dialect: str,
    rows: Sequence[tuple[str, str, str]],
    *,
    correlation_id: uuid.UUID,
    created_at: datetime,
) -> Rows:
    """The asset-X audit index from (asset id, user id, score) as text."""
    if dialect == "postgresql":
        tail = f"\t{correlation_id}\t{created_at.isoformat()}\n"
        return Rows(
            calculation_assets_table,
            CALCULATION_ASSET_COLUMNS,
            lines=[f"{a}\t{u}\t{sc}{tail}" for a, u, sc in rows],
        )
    return Rows(
        calculation_assets_table,
        CALCULATION_ASSET_COLUMNS,
        rows=[(uuid.UUID(a), uuid.UUID(u), sc, correlation_id, created_at) for a, u, sc in rows],
    )


def add_calculation_assets(
    conn: Connection,
    rows: Sequence[tuple[str, str, str]],
    *,
    correlation_id: uuid.UUID,
    created_at: datetime,
) -> None:
    write_rows(
        conn,
        calculation_asset_rows(
            conn.dialect.name, rows, correlation_id=correlation_id, created_at=created_at
        ),
    )


def upsert_recommendations(conn: Connection, rows: list[dict[str, Any]]) -> None:
    """One row per (user, market_date): a new calculation replaces the old one."""
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
    )


def recommendations_for(conn: Connection, *, user_ids: Sequence[uuid.UUID], day: date) -> list[Any]:
    """The persisted rows of `user_ids` on `day` (by primary key)."""
    r = recommendations_table
    out: list[Any] = []
    for chunk in _chunks(user_ids):
        out.extend(
            conn.execute(
                select(
                    r.c.user_id,
                    r.c.market_date,
                    r.c.generated_at,
                    r.c.total_investable,
                    r.c.correlation_id,
                    r.c.payload,
                    r.c.portfolio,
                ).where(r.c.user_id.in_(chunk), r.c.market_date == day)
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
    out: list[tuple[str, dict[str, Any]]] = []
    for chunk in _chunks(user_ids):
        rows = conn.execute(
            select(e.c.user_id, e.c.payload)
            .where(
                e.c.correlation_id == correlation_id,
                e.c.event_type == event_type,
                e.c.user_id.in_(chunk),
            )
            .order_by(e.c.user_id)
        )
        out.extend((str(user_id), payload) for user_id, payload in rows)
    return out


def scores_of(
    conn: Connection, *, user_ids: Sequence[uuid.UUID], day: date
) -> dict[str, dict[str, tuple[Decimal, Decimal]]]:
    """user id → asset id → (score, max possible score) stored in `asset_scores` on `day`."""
    s = asset_scores_table
    out: dict[str, dict[str, tuple[Decimal, Decimal]]] = {}
    for chunk in _chunks(user_ids):
        rows = conn.execute(
            select(s.c.user_id, s.c.asset_id, s.c.score, s.c.max_possible_score).where(
                s.c.user_id.in_(chunk), s.c.market_date == day
            )
        )
        for user_id, asset_id, score, top in rows:
            out.setdefault(str(user_id), {})[str(asset_id)] = (Decimal(score), Decimal(top))
    return out
