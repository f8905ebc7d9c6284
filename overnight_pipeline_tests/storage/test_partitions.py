"""Monthly partitions of the audit tables (issue 15): a calculation's rows land in the month
of its `calculated_at` whatever the clock says when they are written, a retried write is
refused inside that partition, months are created ahead safely by concurrent writers, and
migration 0004 keeps a previous night's output replayable on PostgreSQL and SQLite."""

from __future__ import annotations

import threading
import uuid
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import pytest
from sqlalchemy import Engine, func, inspect, select, text
from sqlalchemy.exc import IntegrityError

from overnight_pipeline.core.captured_reader import holding_assets, snapshot_keys
from overnight_pipeline.core.captured_text import POSITION_FIELDS
from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.core.snapshots import asset_positions
from overnight_pipeline.providers.synthetic import SyntheticProvider
from overnight_pipeline.seed import seed
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.steps.market_data import fetch_fundamentals, fetch_prices, fetch_rates
from overnight_pipeline.steps.replay import replay_sample
from overnight_pipeline.steps.reports import StepReport
from overnight_pipeline.storage.db import downgrade, make_engine, migrate
from overnight_pipeline.storage.events import event_payloads, snapshots, users_with_event
from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    calculation_snapshots_table,
)
from overnight_pipeline.storage.partitions import ensure_months, existing
from overnight_pipeline.storage.retention import delete_expired
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

NYSE = tuple(m for m in DEFAULT_MARKETS if m.code == "NYSE")
MARKETS = {m.code: m for m in NYSE}
LAST_NIGHT_OF_NOVEMBER = date(2026, 11, 30)
FIRST_NIGHT_OF_DECEMBER = date(2026, 12, 1)


def _seeded(url: str, *, users: int = 12) -> Engine:
    migrate(url)
    engine = make_engine(url)
    provider = SyntheticProvider(MARKETS)
    with engine.begin() as conn:
        seed(conn, users=users, seed=4, as_of=LAST_NIGHT_OF_NOVEMBER, markets=NYSE)
    for day in (LAST_NIGHT_OF_NOVEMBER, FIRST_NIGHT_OF_DECEMBER):
        kw = {"market": "NYSE", "day": day, "markets": MARKETS}
        fetch_rates(engine, provider, **kw)
        fetch_prices(engine, provider, **kw)
        fetch_fundamentals(engine, provider, **kw)
    return engine


def _night(engine: Engine, day: date, cid: uuid.UUID, at: datetime) -> StepReport:
    return score_and_recommend(
        engine,
        market="NYSE",
        day=day,
        markets=MARKETS,
        correlation_id=cid,
        calculated_at=at,
        run_id=f"run-{cid}",
        batch_size=5,
    )


def _homes(engine: Engine, cid: uuid.UUID) -> dict[str, set[str]]:
    """Which partition holds each table's rows of the calculation."""
    out = {}
    for table in (calculation_events_table, calculation_assets_table):
        with engine.connect() as conn:
            out[table.name] = set(
                conn.scalars(
                    select(text("tableoid::regclass::text"))
                    .select_from(table)
                    .where(table.c.correlation_id == cid)
                )
            )
    return out


def test_a_night_across_a_month_boundary_stays_in_the_month_it_started(fresh_url: str) -> None:
    """A calculation created at 23:59:59 on 30 November writes (and, retried after
    midnight, would write) into November's partitions: its rows carry its start, not the
    wall clock; a duplicate of its events is refused there; the next night goes to
    December's, with its own copy of a snapshot."""
    engine = _seeded(fresh_url)
    try:
        november = datetime(2026, 11, 30, 23, 59, 59, 900_000, tzinfo=UTC)
        december = datetime(2026, 12, 1, 0, 0, 0, 100_000, tzinfo=UTC)
        first = uuid.uuid4()
        report = _night(engine, LAST_NIGHT_OF_NOVEMBER, first, november)
        users = report.users_succeeded
        assert users > 0
        if engine.dialect.name == "postgresql":
            assert _homes(engine, first) == {
                "calculation_events": {"calculation_events_p2026_11"},
                "calculation_assets": {"calculation_assets_p2026_11"},
            }
        e = calculation_events_table.c
        with engine.connect() as conn:
            assert set(conn.scalars(select(e.calculated_at).where(e.correlation_id == first))) == {
                november
            }
        # The step retried (after midnight): every user is resumed, nothing written twice.
        again = _night(engine, LAST_NIGHT_OF_NOVEMBER, first, november)
        assert again.users_resumed == users and again.users_succeeded == 0
        with engine.connect() as conn:
            counts = Counter(conn.scalars(select(e.event_type).where(e.correlation_id == first)))
        assert set(counts.values()) == {users}
        # A write that slipped past the resume is refused by the unique key, in its month.
        with engine.connect() as conn:
            row = conn.execute(
                select(e.correlation_id, e.user_id, e.event_type, e.payload, e.calculated_at)
                .where(e.correlation_id == first)
                .limit(1)
            ).one()
            with pytest.raises(IntegrityError):
                conn.execute(calculation_events_table.insert().values(**row._asdict()))
            conn.rollback()

        second = uuid.uuid4()
        _night(engine, FIRST_NIGHT_OF_DECEMBER, second, december)
        if engine.dialect.name == "postgresql":
            assert _homes(engine, second) == {
                "calculation_events": {"calculation_events_p2026_12"},
                "calculation_assets": {"calculation_assets_p2026_12"},
            }
        # Both nights replay from their events and the snapshots of their own months.
        for cid, day in ((first, LAST_NIGHT_OF_NOVEMBER), (second, FIRST_NIGHT_OF_DECEMBER)):
            outcome = replay_sample(engine, correlation_id=cid, day=day)
            assert outcome.checked and outcome.mismatches == []
        s = calculation_snapshots_table.c
        with engine.connect() as conn:
            months = set(conn.scalars(select(s.month)))
        assert months == {date(2026, 11, 1), date(2026, 12, 1)}
    finally:
        engine.dispose()


def test_retention_drops_a_months_inputs_snapshots_and_keeps_those_the_next_month_references(
    fresh_url: str,
) -> None:
    """The users' own inputs are a snapshot per month (format 5): December's night stores its
    own copies of the inputs November's night stored (the same content, the same hashes).
    Two years on, retention drops November whole, its inputs snapshots included, and keeps
    every snapshot December's events reference: that night still replays exactly."""
    engine = _seeded(fresh_url)
    try:
        november, december = uuid.uuid4(), uuid.uuid4()
        _night(engine, LAST_NIGHT_OF_NOVEMBER, november, datetime(2026, 11, 30, 22, tzinfo=UTC))
        _night(engine, FIRST_NIGHT_OF_DECEMBER, december, datetime(2026, 12, 1, 22, tzinfo=UTC))
        s = calculation_snapshots_table.c

        def inputs_by_month() -> dict[date, set[str]]:
            with engine.connect() as conn:
                rows = conn.execute(select(s.month, s.hash).where(s.kind == "inputs")).all()
            out: dict[date, set[str]] = {}
            for month, key in rows:
                out.setdefault(month, set()).add(key)
            return out

        def referenced(cid: uuid.UUID) -> set[str]:
            with engine.connect() as conn:
                users = users_with_event(conn, correlation_id=cid, event_type="INPUTS_CAPTURED")
                docs = event_payloads(
                    conn, correlation_id=cid, event_type="INPUTS_CAPTURED", user_ids=list(users)
                )
            assert docs and {d["format"] for _, d in docs} == {5}
            return {d["inputs"] for _, d in docs}

        stored = inputs_by_month()
        assert stored[date(2026, 11, 1)] == referenced(november)
        assert stored[date(2026, 12, 1)] == referenced(december) == referenced(november)
        delete_expired(engine, now=datetime(2028, 12, 1, 0, 0, 1, tzinfo=UTC))
        assert inputs_by_month() == {date(2026, 12, 1): referenced(december)}
        with engine.connect() as conn:
            assert not users_with_event(conn, correlation_id=november, event_type="CALC_STARTED")
            left = set(conn.scalars(select(s.month)))
        assert left == {date(2026, 12, 1)}
        outcome = replay_sample(engine, correlation_id=december, day=FIRST_NIGHT_OF_DECEMBER)
        assert outcome.checked and outcome.mismatches == []
    finally:
        engine.dispose()


def test_0012_lets_the_snapshots_hold_the_inputs_kind_and_its_downgrade_removes_them(
    fresh_url: str,
) -> None:
    """At 0012 an `inputs` snapshot is accepted and an unknown kind refused; below it the
    inputs snapshots are gone and the kind is refused again."""
    migrate(fresh_url)
    engine = make_engine(fresh_url)
    s = calculation_snapshots_table

    def store(key: str, kind: str) -> None:
        with engine.begin() as conn:
            ensure_months(conn, [datetime(2026, 11, 30, tzinfo=UTC)])
            conn.execute(
                s.insert().values(hash=key, month=date(2026, 11, 1), kind=kind, payload={})
            )

    try:
        store("a", "inputs")
        with pytest.raises(IntegrityError):
            store("b", "unknown")
        engine.dispose()
        downgrade(fresh_url, "0011")
        engine = make_engine(fresh_url)
        with engine.connect() as conn:
            assert list(conn.execute(select(s.c.hash, s.c.kind))) == []
        with pytest.raises(IntegrityError):
            store("c", "inputs")
        store("d", "criteria")
    finally:
        engine.dispose()


def test_months_are_created_once_by_concurrent_writers() -> None:
    url = create_pg_database("overnight_partitions")
    try:
        migrate(url)
        engine = make_engine(url, pool_size=8)
        far = [datetime(2031, 5, 17, tzinfo=UTC), datetime(2031, 6, 2, tzinfo=UTC)]
        created: list[list[str]] = []
        errors: list[BaseException] = []
        start = threading.Barrier(6)

        def create() -> None:
            try:
                start.wait()
                with engine.begin() as conn:
                    created.append(ensure_months(conn, far))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=create) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        made = sorted(name for names in created for name in names)
        assert made == sorted(
            f"{t}_p2031_{m}"
            for t in (
                "calculation_events",
                "calculation_assets",
                "calculation_snapshots",
                "overnight_job_runs",
            )
            for m in ("05", "06")
        )
        with engine.connect() as conn:
            assert {m for (_, m) in existing(conn)} >= {date(2031, 5, 1), date(2031, 6, 1)}
        engine.dispose()
    finally:
        drop_pg_database(url)


def test_a_month_without_a_partition_is_refused_by_name() -> None:
    """A write into a month nobody created fails loudly (no default partition)."""
    url = create_pg_database("overnight_partitions")
    try:
        migrate(url)
        engine = make_engine(url)
        with engine.connect() as conn, pytest.raises(Exception, match="no partition"):
            conn.execute(
                calculation_events_table.insert().values(
                    correlation_id=uuid.uuid4(),
                    user_id=uuid.uuid4(),
                    event_type="CALC_STARTED",
                    payload={},
                    calculated_at=datetime(2040, 1, 1, tzinfo=UTC),
                )
            )
        engine.dispose()
    finally:
        drop_pg_database(url)


def test_0004_keeps_a_previous_nights_output(fresh_url: str) -> None:
    """A night written, the database taken back to 0003 (plain tables, a market snapshot
    once per hash, events without `calculated_at`, the criteria snapshots' rules folded
    back into the events: format 2), then upgraded again: every row is back, the market
    snapshot is in the month of the events that reference it, the night still replays
    exactly, and the next night runs on the upgraded database."""
    engine = _seeded(fresh_url)
    tables = ("calculation_events", "calculation_assets", "overnight_job_runs")
    try:
        cid = uuid.uuid4()
        at = datetime(2026, 11, 30, 22, 0, tzinfo=UTC)
        report = _night(engine, LAST_NIGHT_OF_NOVEMBER, cid, at)
        assert report.users_succeeded > 0

        def counts() -> dict[str, int]:
            with engine.connect() as conn:
                # The asset-X index by its (user, score) pairs: their grouping into array
                # rows (0007) is the writer's, not the migration's.
                pairs = (
                    "sum(cardinality(user_ids))"
                    if conn.dialect.name == "postgresql"
                    else "sum(json_array_length(user_ids))"
                )
                return {
                    t: conn.execute(
                        text(
                            f"SELECT {pairs if t == 'calculation_assets' else 'count(*)'} FROM {t}"
                        )
                    ).scalar_one()
                    for t in (*tables, "calculation_snapshots WHERE kind = 'market'")
                }

        def captured() -> dict[str, dict]:
            with engine.connect() as conn:
                return dict(
                    event_payloads(
                        conn,
                        correlation_id=cid,
                        event_type="INPUTS_CAPTURED",
                        user_ids=list(
                            users_with_event(conn, correlation_id=cid, event_type="INPUTS_CAPTURED")
                        ),
                    )
                )

        before = counts()
        with engine.connect() as conn:
            new = captured()
            shared = snapshots(conn, {k for d in new.values() for k in snapshot_keys(d)})
        assert {d["format"] for d in new.values()} == {5}
        engine.dispose()
        # 0012: format 5 gets the user's own inputs back from its inputs snapshot (format 3,
        # holdings by asset id), and the inputs snapshots go ...
        downgrade(fresh_url, "0011")
        engine = make_engine(fresh_url)
        with engine.connect() as conn:
            ids = {uid: holding_assets(doc, shared) for uid, doc in new.items()}
            expected = {
                uid: {
                    **{k: v for k, v in doc.items() if k != "inputs"},
                    **{
                        k: shared[doc["inputs"]][k]
                        for k in ("baseCurrency", "contribution", "assetClasses", "holdings")
                    },
                    "format": 3,
                }
                for uid, doc in new.items()
            }
            assert captured() == expected
            assert [r[0] for d in expected.values() for r in d["holdings"]["rows"]] == [
                a for uid in expected for a in ids[uid]
            ]
            assert not conn.scalar(
                text("SELECT count(*) FROM calculation_snapshots WHERE kind = 'inputs'")
            )
            new = captured()
        engine.dispose()
        # ... 0011 rewrites format 4 (a night written before 0012: held assets by their
        # rows' positions in the market snapshot) as format 3 ...
        e = calculation_events_table.c
        with engine.begin() as conn:
            for uid, doc in new.items():
                positions = asset_positions(shared[doc["snapshot"]])
                rows = [[positions[a], *rest] for a, *rest in doc["holdings"]["rows"]]
                fourth = {
                    **doc,
                    "format": 4,
                    "holdings": {"columns": list(POSITION_FIELDS), "rows": rows},
                }
                conn.execute(
                    calculation_events_table.update()
                    .where(e.correlation_id == cid, e.user_id == uuid.UUID(str(uid)))
                    .where(e.event_type == "INPUTS_CAPTURED")
                    .values(payload=fourth)
                )
        assert {d["format"] for d in captured().values()} == {4}
        engine.dispose()
        downgrade(fresh_url, "0010")
        engine = make_engine(fresh_url)
        assert captured() == new
        engine.dispose()
        # ... which 0004 turns into format 2.
        downgrade(fresh_url, "0003")
        engine = make_engine(fresh_url)
        with engine.connect() as conn:
            columns = {c["name"] for c in inspect(conn).get_columns("calculation_events")}
            assert "calculated_at" not in columns
            assert (
                conn.execute(text("SELECT count(*) FROM calculation_events")).scalar_one()
                == (before["calculation_events"])
            )
        engine.dispose()
        migrate(fresh_url)
        engine = make_engine(fresh_url)
        assert counts() == before
        # The same documents, the rules back in place of their reference.
        assert captured() == {
            uid: {
                **doc,
                "format": 2,
                "criteria": {
                    "version": doc["criteria"]["version"],
                    "rules": shared[doc["criteria"]["snapshot"]]["rules"],
                },
            }
            for uid, doc in new.items()
        }
        e = calculation_events_table.c
        with engine.connect() as conn:
            first_written = conn.scalar(
                select(func.min(e.created_at)).where(e.correlation_id == cid)
            )
            assert set(conn.scalars(select(e.calculated_at).where(e.correlation_id == cid))) == {
                first_written
            }
            snapshot_months = set(conn.scalars(select(calculation_snapshots_table.c.month)))
        assert snapshot_months == {first_written.replace(day=1).date()}
        outcome = replay_sample(engine, correlation_id=cid, day=LAST_NIGHT_OF_NOVEMBER)
        assert outcome.checked and outcome.mismatches == []
        nxt = uuid.uuid4()
        _night(engine, FIRST_NIGHT_OF_DECEMBER, nxt, datetime.now(UTC) - timedelta(seconds=1))
        outcome = replay_sample(engine, correlation_id=nxt, day=FIRST_NIGHT_OF_DECEMBER)
        assert outcome.checked and outcome.mismatches == []
        with engine.connect() as conn:
            assert users_with_event(conn, correlation_id=nxt, event_type="CALC_COMPLETED")
    finally:
        engine.dispose()


def test_replay_flags_a_changed_or_missing_snapshot(fresh_url: str) -> None:
    """Snapshots are immutable: one whose content no longer hashes to its key (a criteria
    snapshot edited in place) or that is gone (a market snapshot deleted) makes the replay
    check name every user that references it."""
    engine = _seeded(fresh_url)
    try:
        cid = uuid.uuid4()
        _night(engine, LAST_NIGHT_OF_NOVEMBER, cid, datetime(2026, 11, 30, 22, tzinfo=UTC))
        outcome = replay_sample(engine, correlation_id=cid, day=LAST_NIGHT_OF_NOVEMBER)
        assert outcome.checked and outcome.mismatches == []
        s = calculation_snapshots_table
        with engine.begin() as conn:
            criteria = conn.execute(
                select(s.c.hash, s.c.payload).where(s.c.kind == "criteria").limit(1)
            ).one()
            edited = {"rules": [{**criteria.payload["rules"][0], "points": 100}]}
            conn.execute(s.update().where(s.c.hash == criteria.hash).values(payload=edited))
        outcome = replay_sample(engine, correlation_id=cid, day=LAST_NIGHT_OF_NOVEMBER)
        assert outcome.mismatches and {m["what"] for m in outcome.mismatches} == {
            f"the snapshot {criteria.hash} no longer hashes to its key"
        }
        with engine.begin() as conn:
            market = conn.scalar(select(s.c.hash).where(s.c.kind == "market"))
            conn.execute(s.delete().where(s.c.hash == market))
        outcome = replay_sample(engine, correlation_id=cid, day=LAST_NIGHT_OF_NOVEMBER)
        assert {m["user"] for m in outcome.mismatches} == set(outcome.checked)
        assert f"the snapshot {market} is missing" in {m["what"] for m in outcome.mismatches}
    finally:
        engine.dispose()
