"""`overnight load`: an idempotent, set-based upsert of a validated load file."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from itertools import chain
from typing import Any

from sqlalchemy import Connection, delete, func, select

from overnight_pipeline.core.load_errors import FileError, LoadFileError
from overnight_pipeline.core.load_fields import AssetIn, UserIn
from overnight_pipeline.core.load_file import LoadFile
from overnight_pipeline.core.load_stream import LoadStream
from overnight_pipeline.storage.bulk import upsert, upsert_copied
from overnight_pipeline.storage.criteria import write_criteria_versions
from overnight_pipeline.storage.keysets import keys_in
from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    criteria_versions_table,
    holdings_table,
    user_changes_table,
    users_table,
)

CHANGE_KINDS = (
    "created",
    "baseCurrency",
    "contribution",
    "active",
    "classes",
    "holdings",
    "criteria",
)
"""What a `user_changes` row can say changed, in this order."""
CHUNK = 10_000
"""Users written at a time by `load_stream`. Each chunk's reads join its users against
whole tables (hash joins: cheaper than thousands of index probes to the planner), so not
too many chunks: a reload's time in statements falls as chunks grow, and at 5,000 a reload
took as long as the whole-file load before it; but what a chunk holds (its users, their
rows, their inputs before and after) is most of the load's memory. The figures behind
10,000: docs/PERFORMANCE.md, "Figures once quoted in the code"."""


@dataclass(frozen=True)
class LoadReport:
    assets: int
    users: int
    holdings: int
    criteria_versions_created: int
    users_changed: int = 0
    # Who changed and when (`user_changes.changed_at`): `overnight load` marks them in Redis
    # once committed (`storage.freshness.mark_changed`).
    changed_user_ids: tuple[uuid.UUID, ...] = ()
    changed_at: datetime | None = None


def asset_ids(
    conn: Connection, keys: Iterable[tuple[str, str]]
) -> dict[tuple[str, str], uuid.UUID]:
    """Ids of assets by (market, symbol): one query on PostgreSQL, whatever the number of
    keys (`keysets`)."""
    found: dict[tuple[str, str], uuid.UUID] = {}
    t = assets_table
    for wanted in keys_in(conn, [t.c.market, t.c.symbol], sorted(set(keys))):
        rows = conn.execute(select(t.c.market, t.c.symbol, t.c.id).where(wanted))
        found.update({(m, s): i for m, s, i in rows})
    return found


def load(
    conn: Connection, doc: LoadFile, *, now: datetime | None = None, first_user: int = 0
) -> LoadReport:
    """Upsert `doc`; the caller commits. Raises `LoadFileError` (nothing written) when a
    holding names an asset that is neither in the file nor in the database. `doc` may be
    a chunk of a file (`load_stream`): its users are the file's from `first_user` on, and
    `now` is the whole load's time."""
    now = now or datetime.now(UTC)
    existing = _held_assets(conn, doc, first_user)
    user_ids = [u.id for u in doc.users]
    before = result_inputs(conn, user_ids)

    upsert_assets(conn, doc.assets)
    ids = existing | asset_ids(conn, {(a.market, a.symbol) for a in doc.assets})
    _upsert_users(conn, doc.users, now=now)
    class_ids = _upsert_classes(conn, doc.users)
    holdings = _replace_holdings(conn, doc.users, ids, class_ids)
    _delete_stale_classes(conn, doc.users, class_ids)

    created = write_criteria_versions(conn, {u.id: u.rules() for u in doc.users}, now=now)
    changes = changed_inputs(before, result_inputs(conn, user_ids))
    if changes:
        conn.execute(
            user_changes_table.insert(),
            [{"user_id": u, "changed_at": now, "what": what} for u, what in changes.items()],
        )
    return LoadReport(
        assets=len(doc.assets),
        users=len(doc.users),
        holdings=holdings,
        criteria_versions_created=created,
        users_changed=len(changes),
        changed_user_ids=tuple(changes),
        changed_at=now if changes else None,
    )


def _held_assets(
    conn: Connection, doc: LoadFile, first_user: int
) -> dict[tuple[str, str], uuid.UUID]:
    """Ids of the assets `doc`'s holdings name that the database has; `LoadFileError` when a
    holding names one that is neither there nor in the file."""
    existing = asset_ids(conn, [(h.market, h.symbol) for u in doc.users for h in u.holdings])
    in_file = {(a.market, a.symbol) for a in doc.assets}
    missing = [
        FileError(
            f"$.users[{first_user + i}].holdings[{j}]",
            "asset is neither in $.assets nor in the database",
            f"{h.market}:{h.symbol}",
        )
        for i, u in enumerate(doc.users)
        for j, h in enumerate(u.holdings)
        if (h.market, h.symbol) not in in_file and (h.market, h.symbol) not in existing
    ]
    if missing:
        raise LoadFileError(missing)
    return existing


def _upsert_users(conn: Connection, users: Sequence[UserIn], *, now: datetime) -> None:
    upsert_copied(
        conn,
        users_table,
        [
            {
                "id": u.id,
                "base_currency": u.base_currency,
                "default_contribution": u.default_contribution,
                "active": u.active,
                "created_at": now,
                "updated_at": now,
            }
            for u in users
        ],
        key=["id"],
        update=["base_currency", "default_contribution", "active"],
        extra_set={"updated_at": now},
    )


def _upsert_classes(
    conn: Connection, users: Sequence[UserIn]
) -> dict[tuple[uuid.UUID, str], uuid.UUID]:
    """Upsert the users' asset classes; the ids of all their classes, stale ones too."""
    class_rows = [
        {
            "id": uuid.uuid4(),
            "user_id": u.id,
            "name": c.name,
            "position": pos,
            "target_min": c.target_min,
            "target_max": c.target_max,
            "max_assets": c.max_assets,
            "min_allocation_value": c.min_allocation_value,
        }
        for u in users
        for pos, c in enumerate(u.asset_classes)
    ]
    upsert_copied(
        conn,
        asset_classes_table,
        class_rows,
        key=["user_id", "name"],
        update=["position", "target_min", "target_max", "max_assets", "min_allocation_value"],
    )
    return _class_ids(conn, [u.id for u in users])


def _replace_holdings(
    conn: Connection,
    users: Sequence[UserIn],
    ids: dict[tuple[str, str], uuid.UUID],
    class_ids: dict[tuple[uuid.UUID, str], uuid.UUID],
) -> int:
    """The users' holdings become the file's: absent ones deleted, the others upserted.
    Returns how many the file lists."""
    holding_rows = [
        {
            "user_id": u.id,
            "asset_id": ids[(h.market, h.symbol)],
            "asset_class_id": class_ids[(u.id, h.asset_class)],
            "quantity": h.quantity,
        }
        for u in users
        for h in u.holdings
    ]
    _delete_absent(conn, holding_rows, [u.id for u in users])
    upsert_copied(
        conn,
        holdings_table,
        holding_rows,
        key=["user_id", "asset_id"],
        update=["asset_class_id", "quantity"],
    )
    return len(holding_rows)


def _delete_stale_classes(
    conn: Connection,
    users: Sequence[UserIn],
    class_ids: dict[tuple[uuid.UUID, str], uuid.UUID],
) -> None:
    """The users' asset classes the file no longer lists (their holdings are gone already)."""
    kept_classes = {(u.id, c.name) for u in users for c in u.asset_classes}
    stale = [cid for key, cid in class_ids.items() if key not in kept_classes]
    for gone in keys_in(conn, [asset_classes_table.c.id], [(cid,) for cid in stale]):
        conn.execute(delete(asset_classes_table).where(gone))


def upsert_assets(conn: Connection, assets: Sequence[AssetIn]) -> None:
    upsert(
        conn,
        assets_table,
        [
            {
                "id": uuid.uuid4(),
                "market": a.market,
                "symbol": a.symbol,
                "currency": a.currency,
                "name": a.name,
            }
            for a in assets
        ],
        key=["market", "symbol"],
        update=["currency", "name"],
    )


def load_stream(
    conn: Connection,
    source: LoadStream,
    *,
    chunk: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> LoadReport:
    """Upsert a file `source` has checked, `chunk` users at a time, in the caller's
    transaction: the rows, criteria versions and `user_changes` of `load` of the whole
    file, in memory that does not grow with it (one chunk of users is held at a time).
    `progress` is called with the users written after each chunk. Raises `LoadFileError`
    (nothing written) when a holding names an asset that is neither in the file nor in
    the database, or when the file changed since it was checked. `chunk`: CHUNK."""
    chunk = chunk or CHUNK
    now = datetime.now(UTC)
    elsewhere = source.held - source.asset_keys
    missing = elsewhere - asset_ids(conn, elsewhere).keys()
    if missing:
        raise LoadFileError(
            [
                FileError(
                    f"$.users[{i}].holdings[{j}]",
                    "asset is neither in $.assets nor in the database",
                    f"{h.market}:{h.symbol}",
                )
                for i, user in enumerate(_users(source.items(assets=False)))
                for j, h in enumerate(user.holdings)
                if (h.market, h.symbol) in missing
            ]
        )
    # Assets first, so that every chunk's holdings find theirs.
    items: Iterable[AssetIn | UserIn] = (
        source.items()
        if source.assets_first
        else chain(source.items(users=False), source.items(assets=False))
    )
    report: LoadReport | None = None
    assets: list[AssetIn] = []
    users: list[UserIn] = []
    written = 0
    for item in chain(items, [None]):
        if isinstance(item, AssetIn):
            assets.append(item)
        elif isinstance(item, UserIn):
            users.append(item)
        if assets and (len(assets) == chunk or item is None or isinstance(item, UserIn)):
            upsert_assets(conn, assets)
            assets = []
        if users and (len(users) == chunk or item is None):
            done = load(conn, LoadFile(assets=[], users=users), now=now, first_user=written)
            report = done if report is None else _sum(report, done)
            written += len(users)
            users = []
            if progress:
                progress(written)
    if report is None:  # a file without users
        report = load(conn, LoadFile(assets=[], users=[]), now=now)
    return replace(report, assets=source.assets)


def _users(items: Iterable[AssetIn | UserIn]) -> Iterator[UserIn]:
    return (item for item in items if isinstance(item, UserIn))


def _sum(a: LoadReport, b: LoadReport) -> LoadReport:
    """Two chunks' reports as one: counts add up, collections are joined, any other field
    (the load's time) is the latest that is set."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(a):
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, int) and not isinstance(x, bool):
            fields[f.name] = x + y
        elif isinstance(x, list | tuple):
            fields[f.name] = type(x)([*x, *y])
        elif isinstance(x, set | frozenset):
            fields[f.name] = x | y
        else:
            fields[f.name] = y if y is not None else x
    return replace(a, **fields)


def result_inputs(conn: Connection, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, dict[str, Any]]:
    """What a user's result depends on, by `CHANGE_KINDS` (but `created`), as comparable
    values: four statements whatever the number of users (`keysets`). Decimals compare by
    value (10.00 == 10)."""
    u, c, h = users_table, asset_classes_table, holdings_table
    v = criteria_versions_table
    found: dict[uuid.UUID, dict[str, Any]] = {}
    keys = [(i,) for i in user_ids]
    for wanted in keys_in(conn, [u.c.id], keys):
        for uid, currency, contribution, active in conn.execute(
            select(u.c.id, u.c.base_currency, u.c.default_contribution, u.c.active).where(wanted)
        ):
            found[uid] = {
                "baseCurrency": currency,
                "contribution": contribution,
                "active": active,
                "classes": set(),
                "holdings": set(),
                "criteria": None,
            }
    for wanted in keys_in(conn, [c.c.user_id], keys):
        for row in conn.execute(
            select(
                c.c.user_id,
                c.c.name,
                c.c.position,
                c.c.target_min,
                c.c.target_max,
                c.c.max_assets,
                c.c.min_allocation_value,
            ).where(wanted)
        ):
            found[row[0]]["classes"].add(tuple(row[1:]))
    for wanted in keys_in(conn, [h.c.user_id], keys):
        for uid, asset, name, quantity in conn.execute(
            select(h.c.user_id, h.c.asset_id, c.c.name, h.c.quantity)
            .join(c, c.c.id == h.c.asset_class_id)
            .where(wanted)
        ):
            found[uid]["holdings"].add((asset, name, quantity))
    for wanted in keys_in(conn, [v.c.user_id], keys):
        for uid, version in conn.execute(
            select(v.c.user_id, func.max(v.c.version)).where(wanted).group_by(v.c.user_id)
        ):
            found[uid]["criteria"] = version
    return found


def changed_inputs(
    before: dict[uuid.UUID, dict[str, Any]], after: dict[uuid.UUID, dict[str, Any]]
) -> dict[uuid.UUID, list[str]]:
    """Each user whose inputs differ, with what differs (`CHANGE_KINDS` order)."""
    changes: dict[uuid.UUID, list[str]] = {}
    for uid, now in after.items():
        then = before.get(uid)
        if then is None:
            changes[uid] = ["created"]
            continue
        what = [kind for kind in CHANGE_KINDS[1:] if then[kind] != now[kind]]
        if what:
            changes[uid] = what
    return changes


def _class_ids(
    conn: Connection, user_ids: list[uuid.UUID]
) -> dict[tuple[uuid.UUID, str], uuid.UUID]:
    t = asset_classes_table
    found: dict[tuple[uuid.UUID, str], uuid.UUID] = {}
    for loaded in keys_in(conn, [t.c.user_id], [(u,) for u in user_ids]):
        rows = conn.execute(select(t.c.user_id, t.c.name, t.c.id).where(loaded))
        found.update({(u, n): i for u, n, i in rows})
    return found


def _delete_absent(
    conn: Connection, holding_rows: list[dict[str, Any]], user_ids: list[uuid.UUID]
) -> None:
    """Holdings of loaded users that the file no longer lists are sold: delete them, in
    one statement on PostgreSQL however many there are (`keysets`)."""
    t = holdings_table
    wanted = {(r["user_id"], r["asset_id"]) for r in holding_rows}
    gone: list[tuple[uuid.UUID, uuid.UUID]] = []
    for loaded in keys_in(conn, [t.c.user_id], [(u,) for u in user_ids]):
        present = conn.execute(select(t.c.user_id, t.c.asset_id).where(loaded))
        gone.extend((u, a) for u, a in present if (u, a) not in wanted)
    for sold in keys_in(conn, [t.c.user_id, t.c.asset_id], gone):
        conn.execute(delete(t).where(sold))
