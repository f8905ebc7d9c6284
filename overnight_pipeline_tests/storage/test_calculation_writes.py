"""What a calculation writes and reads back (`storage.events`, `storage.results`), through
COPY's text format on PostgreSQL (`bulk.Rows`) and executemany on SQLite."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Connection, select, text

from overnight_pipeline.storage.bulk import write_rows
from overnight_pipeline.storage.events import event_payloads, event_rows, insert_snapshot, snapshots
from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
)
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.queries import calculations_for_asset
from overnight_pipeline.storage.results import (
    BUCKETS,
    ROW_USERS,
    bucket_of,
    calculation_asset_rows,
)
from overnight_pipeline.storage.scores import (
    ScoreRow,
    asset_scores_table,
    user_score_rows,
    write_scores,
)
from overnight_pipeline_tests.support.stored_results import insert_asset, insert_users

DAY = date(2026, 11, 27)


# The writes below are what the pipeline's steps do with `event_rows`, `user_score_rows`,
# `write_scores` and `calculation_asset_rows`, one table at a time.


def _append_events(
    conn: Connection, events: Sequence[tuple[uuid.UUID, Any, str, Any]], *, at: datetime
) -> None:
    ensure_months(conn, [at])
    write_rows(conn, event_rows(conn.dialect.name, events, at=at, calculated_at=at))


def _replace_scores(
    conn: Connection,
    rows: Sequence[ScoreRow],
    *,
    user_ids: Sequence[uuid.UUID],
    day: date,
    correlation_id: uuid.UUID,
    computed_at: datetime,
) -> None:
    write_scores(
        conn,
        user_score_rows(
            conn.dialect.name,
            rows,
            versions={str(u): 1 for u in user_ids},
            day=day,
            correlation_id=correlation_id,
            computed_at=computed_at,
        ),
    )


def _add_calculation_assets(
    conn: Connection,
    rows: Sequence[tuple[str, str, str]],
    *,
    correlation_id: uuid.UUID,
    calculated_at: datetime,
) -> None:
    ensure_months(conn, [calculated_at])
    write_rows(
        conn,
        calculation_asset_rows(
            conn.dialect.name, rows, correlation_id=correlation_id, calculated_at=calculated_at
        ),
    )


def test_copy_writes_keep_every_character(db_conn: Connection) -> None:
    """Tabs, newlines and backslashes in text and JSON survive the COPY text format (and
    the executemany path of SQLite)."""
    user = uuid.uuid4()
    insert_users(db_conn, [user])
    asset = insert_asset(db_conn, "NY\tSE\\", "X")
    cid = uuid.uuid4()
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    odd = {"name": 'a\tb\nc\\d"e', "list": ["\r", "é"]}
    pretty = '{\n\t"k": "v\\\\w"\n}'  # JSON whitespace: raw newline and tab
    _append_events(
        db_conn,
        [
            (cid, str(user), "CALC_STARTED", orjson.dumps(odd).decode()),
            (cid, str(user), "INPUTS_CAPTURED", pretty),
            (cid, user, "SCORES_COMPUTED", odd),
        ],
        at=now,
    )
    _replace_scores(
        db_conn,
        [
            (
                str(user),
                str(asset),
                "NY\tSE\\",
                "3.5000",
                "10",
                '{"criteriaCount":1,"topContributor":"a\\\\b"}',
            )
        ],
        user_ids=[user],
        day=DAY,
        correlation_id=cid,
        computed_at=now,
    )
    _add_calculation_assets(
        db_conn, [(str(asset), str(user), "3.5000")], correlation_id=cid, calculated_at=now
    )
    e = calculation_events_table.c
    got = dict(
        db_conn.execute(select(e.event_type, e.payload).where(e.correlation_id == cid)).all()
    )
    assert got == {"CALC_STARTED": odd, "INPUTS_CAPTURED": {"k": "v\\w"}, "SCORES_COMPUTED": odd}
    s = asset_scores_table.c
    row = db_conn.execute(select(s.market, s.score, s.breakdown).where(s.user_id == user)).one()
    assert row == ("NY\tSE\\", Decimal("3.5"), {"criteriaCount": 1, "topContributor": "a\\b"})
    found = calculations_for_asset(db_conn, asset_id=asset, user_id=user, limit=10)
    assert [(c.user_id, c.score, c.correlation_id) for c in found] == [(user, Decimal("3.5"), cid)]
    # Replacing the scores of the day leaves one row.
    _replace_scores(
        db_conn,
        [(str(user), str(asset), "M", "1", "10", "{}")],
        user_ids=[user],
        day=DAY,
        correlation_id=cid,
        computed_at=now,
    )
    assert db_conn.execute(select(s.market).where(s.user_id == user)).scalars().all() == ["M"]


def test_event_payloads_come_back_by_user(db_conn: Connection) -> None:
    users = sorted(uuid.uuid4() for _ in range(3))
    cid = uuid.uuid4()
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    _append_events(
        db_conn,
        [(cid, u, "INPUTS_CAPTURED", {"n": i, "t": "x\ty"}) for i, u in enumerate(reversed(users))],
        at=now,
    )
    got = event_payloads(
        db_conn, correlation_id=cid, event_type="INPUTS_CAPTURED", user_ids=users[:2]
    )
    assert got == [(str(users[0]), {"n": 2, "t": "x\ty"}), (str(users[1]), {"n": 1, "t": "x\ty"})]


def test_asset_scores_are_each_users_current_scores(db_conn: Connection) -> None:
    """A newer night replaces a user's rows (a holding sold leaves none behind); a backfill
    of an older date leaves newer rows in place and writes those of users without any."""
    fresh, stale, new = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    insert_users(db_conn, [fresh, stale, new])
    a, b = insert_asset(db_conn, "NYSE", "A"), insert_asset(db_conn, "NYSE", "B")
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    s = asset_scores_table.c

    def night(day: date, users: list[uuid.UUID], assets: list[uuid.UUID], score: str) -> None:
        rows = [(str(u), str(x), "NYSE", score, "10", "{}") for u in users for x in assets]
        _replace_scores(
            db_conn, rows, user_ids=users, day=day, correlation_id=uuid.uuid4(), computed_at=now
        )

    def current() -> set[tuple[uuid.UUID, uuid.UUID, date, Decimal]]:
        return set(db_conn.execute(select(s.user_id, s.asset_id, s.market_date, s.score)).all())

    night(date(2026, 11, 26), [fresh, stale], [a, b], "1")
    night(DAY, [fresh], [a], "2")
    expected = {
        (fresh, a, DAY, Decimal(2)),
        (stale, a, date(2026, 11, 26), Decimal(1)),
        (stale, b, date(2026, 11, 26), Decimal(1)),
    }
    assert current() == expected
    night(date(2026, 11, 25), [fresh, stale, new], [b], "3")  # a backfill
    assert current() == expected | {(new, b, date(2026, 11, 25), Decimal(3))}


def test_a_snapshot_is_stored_once_and_never_changed(db_conn: Connection) -> None:
    from overnight_pipeline.core.snapshots import snapshot_hash

    payload = {"rates": {"usdTo": {"EUR": "0.9"}, "asOf": None, "stale": False}}
    key = snapshot_hash(payload)
    now = datetime.now(UTC)
    ensure_months(db_conn, [now])
    insert_snapshot(db_conn, key=key, kind="market", payload=payload, calculated_at=now)
    insert_snapshot(
        db_conn, key=key, kind="market", payload={"other": "content"}, calculated_at=now
    )
    assert snapshots(db_conn, [key, "absent"]) == {key: payload}
    assert snapshot_hash(snapshots(db_conn, [key])[key]) == key


def test_the_asset_index_holds_a_batch_per_asset_and_bucket(db_conn: Connection) -> None:
    """A batch writes one row per asset and user bucket (and per `ROW_USERS` users) with its
    users and scores side by side; a second batch of the same calculation adds rows to the
    same buckets, and both queries return every (user, score) once, newest first."""
    ko, pep = insert_asset(db_conn, "NYSE", "KO"), insert_asset(db_conn, "NYSE", "PEP")
    # 2 × ROW_USERS + 5 users in bucket 0xa, and one in each other bucket.
    crowded = sorted(uuid.UUID(f"a{uuid.uuid4().hex[1:]}") for _ in range(2 * ROW_USERS + 5))
    alone = [uuid.UUID(f"{b:x}{uuid.uuid4().hex[1:]}") for b in range(BUCKETS) if b != 0xA]
    users = sorted(crowded + alone)
    assert {bucket_of(u) for u in users} == set(range(BUCKETS))
    cid, at = uuid.uuid4(), datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    score = {u: f"{i}.{i % 7}" for i, u in enumerate(users)}
    # Batches of users sorted by id, the first ending ROW_USERS users into bucket 0xa.
    half = users.index(crowded[0]) + ROW_USERS
    for batch in (users[:half], users[half:]):
        rows = [(str(x), str(u), score[u]) for u in batch for x in (ko, pep)]
        _add_calculation_assets(db_conn, rows, correlation_id=cid, calculated_at=at)
    a = calculation_assets_table.c
    stored = db_conn.execute(select(a.asset_id, a.bucket, a.user_ids, a.scores)).all()
    assert all(len(ids) == len(scores) <= ROW_USERS for _, _, ids, scores in stored)
    # Bucket 0xa: a row from the first batch, two from the second (ROW_USERS + 5).
    assert sorted(len(ids) for x, b, ids, _ in stored if x == ko and b == 0xA) == [
        5,
        ROW_USERS,
        ROW_USERS,
    ]
    assert len([1 for x, b, _, _ in stored if x == ko and b != 0xA]) == BUCKETS - 1

    operator = calculations_for_asset(db_conn, asset_id=ko, limit=1000)
    assert [c.user_id for c in operator] == sorted(users, reverse=True)
    assert {c.user_id: c.score for c in operator} == {u: Decimal(score[u]) for u in users}
    assert {(c.asset_id, c.correlation_id, c.calculated_at) for c in operator} == {(ko, cid, at)}
    for user in (crowded[0], crowded[-1], alone[3]):
        mine = calculations_for_asset(db_conn, asset_id=pep, user_id=user, limit=10)
        assert [(c.user_id, c.score) for c in mine] == [(user, Decimal(score[user]))]


def test_deleting_users_leaves_no_score_of_theirs(db_conn: Connection) -> None:
    """`asset_scores` has no foreign key (issue 25): `delete_users` deletes the users' scores
    with them, and the others' stay."""
    from overnight_pipeline.storage.seeding import delete_users

    gone, kept = [uuid.uuid4(), uuid.uuid4(), uuid.uuid4()], uuid.uuid4()
    insert_users(db_conn, [*gone, kept])
    x, y = insert_asset(db_conn, "NYSE", "X"), insert_asset(db_conn, "NYSE", "Y")
    now = datetime(2026, 11, 27, 6, 30, tzinfo=UTC)
    everyone = [*gone, kept]
    _replace_scores(
        db_conn,
        [(str(u), str(a), "NYSE", "1", "10", "{}") for u in everyone for a in (x, y)],
        user_ids=everyone,
        day=DAY,
        correlation_id=uuid.uuid4(),
        computed_at=now,
    )
    delete_users(db_conn, gone, chunk=2)
    s = asset_scores_table.c
    assert set(db_conn.execute(select(s.user_id, s.asset_id)).all()) == {(kept, x), (kept, y)}
    orphans = db_conn.execute(
        text("SELECT count(*) FROM asset_scores WHERE user_id NOT IN (SELECT id FROM users)")
    ).scalar_one()
    assert orphans == 0
