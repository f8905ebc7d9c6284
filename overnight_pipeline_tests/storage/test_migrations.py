from __future__ import annotations

from sqlalchemy import String, Uuid, column, inspect, table

from overnight_pipeline.storage.db import downgrade, make_engine, migrate
from overnight_pipeline.storage.models import Base
from overnight_pipeline.storage.partitions import include_name, is_partition
from overnight_pipeline.storage.types import Document, ExactDecimal, UTCDateTime

CONTRACT_TABLES = {
    "assets",
    "users",
    "asset_classes",
    "holdings",
    "criteria_versions",
    "exchange_rates",
    "asset_prices",
    "asset_fundamentals",
    "asset_scores",
    "recommendations",
    "calculation_events",
    "overnight_job_runs",
}


def _tables(url: str) -> set[str]:
    """The database's tables but for Alembic's and the monthly partitions."""
    engine = make_engine(url)
    try:
        names = set(inspect(engine).get_table_names()) - {"alembic_version"}
        return {name for name in names if not is_partition(name)}
    finally:
        engine.dispose()


def _views(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_view_names())
    finally:
        engine.dispose()


def test_migrations_upgrade_downgrade_upgrade_on_a_fresh_database(fresh_url: str) -> None:
    migrate(fresh_url)
    tables = _tables(fresh_url)
    # `asset_scores` is a view over `user_scores` (issue 25): its name still answers.
    assert _views(fresh_url) == {"asset_scores"}
    assert CONTRACT_TABLES <= tables | {"asset_scores"}
    assert tables == set(Base.metadata.tables)
    downgrade(fresh_url, "base")
    assert _tables(fresh_url) == set() and _views(fresh_url) == set()
    migrate(fresh_url)
    assert _tables(fresh_url) == set(Base.metadata.tables)


def test_migrations_match_the_models(pg_url: str) -> None:
    """Autogenerate finds nothing to add: the migrations and the typed models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn, opts={"include_name": include_name, "compare_type": True}
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_event_payloads_are_lz4_compressed_in_the_row_on_postgresql(pg_engine) -> None:
    """The events' payloads use lz4 and STORAGE MAIN on the table and every month, and each
    month (those made by the migration and by `ensure_months`) compresses from 128 bytes."""
    from datetime import UTC, datetime

    from overnight_pipeline.storage.partitions import ensure_months

    with pg_engine.begin() as conn:
        ensure_months(conn, [datetime(2031, 3, 1, tzinfo=UTC)])
    with pg_engine.connect() as conn:
        rows = conn.exec_driver_sql(
            "SELECT c.relname, a.attcompression, a.attstorage, c.reloptions FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid WHERE a.attname = 'payload'"
            " AND c.relname LIKE 'calculation_events%%'"
        ).all()
    assert {r.relname for r in rows} >= {"calculation_events", "calculation_events_p2031_03"}
    assert {(r.attcompression, r.attstorage) for r in rows} == {("l", "m")}
    assert all(
        r.reloptions == ["toast_tuple_target=128"]
        for r in rows
        if r.relname != "calculation_events"
    )


# The two audit tables as revisions 0001-0003 wrote them (the models are today's).
_old_events = table(
    "calculation_events",
    column("correlation_id", Uuid()),
    column("user_id", Uuid()),
    column("event_type", String()),
    column("payload", Document),
    column("created_at", UTCDateTime()),
)
_old_assets = table(
    "calculation_assets",
    column("asset_id", Uuid()),
    column("correlation_id", Uuid()),
    column("user_id", Uuid()),
    column("score", ExactDecimal(16, 4)),
    column("created_at", UTCDateTime()),
)


def _index_entries(conn) -> int:
    """(user, score) pairs of the asset-X index in its array shape (revision 0007)."""
    from sqlalchemy import text

    length = (
        "cardinality(user_ids)"
        if conn.dialect.name == "postgresql"
        else "json_array_length(user_ids)"
    )
    return int(
        conn.execute(
            text(f"SELECT coalesce(sum({length}), 0) FROM calculation_assets")
        ).scalar_one()
    )


def test_0003_keeps_a_previous_nights_output_replayable(fresh_url: str) -> None:
    """A database at 0002 holding two nights of the old write path (self-contained
    `INPUTS_CAPTURED`, scores per night, the asset-X index under its primary key) is
    upgraded: old events replay as before, each user keeps the newest night's scores, every
    index row stays, and the next night (snapshots, current scores) passes the replay
    check on the same database."""
    import uuid
    from datetime import UTC, date, datetime

    import orjson
    from sqlalchemy import func, select

    from overnight_pipeline.core.batch import run_batch
    from overnight_pipeline.core.captured_reader import batch_from_captured
    from overnight_pipeline.core.captured_writer import capture_json
    from overnight_pipeline.core.markets import DEFAULT_MARKETS
    from overnight_pipeline.core.scored import score_json
    from overnight_pipeline.core.scoring import replay
    from overnight_pipeline.providers.synthetic import SyntheticProvider
    from overnight_pipeline.seed import seed
    from overnight_pipeline.steps.calculation import score_and_recommend
    from overnight_pipeline.steps.market_data import fetch_fundamentals, fetch_prices, fetch_rates
    from overnight_pipeline.steps.replay import replay_sample
    from overnight_pipeline.storage.batches import (
        load_batch,
        load_market_snapshot,
        load_rates,
        partition_instruments,
        partition_users,
    )
    from overnight_pipeline.storage.events import event_payloads
    from overnight_pipeline.storage.models import calculation_assets_table, calculation_events_table
    from overnight_pipeline.storage.scores import asset_scores_table

    migrate(fresh_url, "0002")
    engine = make_engine(fresh_url)
    nyse = tuple(m for m in DEFAULT_MARKETS if m.code == "NYSE")
    markets = {m.code: m for m in nyse}
    nights = [date(2026, 11, 24), date(2026, 11, 25), date(2026, 11, 27)]
    provider = SyntheticProvider(markets)
    old: dict[uuid.UUID, list[tuple[str, dict]]] = {}
    try:
        with engine.begin() as conn:
            seed(conn, users=12, seed=3, as_of=nights[0], markets=nyse)
        for day in nights:
            kw = {"market": "NYSE", "day": day, "markets": markets}
            fetch_rates(engine, provider, **kw)
            fetch_prices(engine, provider, **kw)
            fetch_fundamentals(engine, provider, **kw)
        # Two nights written as revision 0002's code wrote them.
        for day in nights[:2]:
            cid, at = uuid.uuid4(), datetime.combine(day, datetime.min.time(), UTC)
            with engine.begin() as conn:
                users = partition_users(conn, market="NYSE", day=day, markets=markets)
                fx = load_rates(conn, day=day)
                held = partition_instruments(conn, users)
                snap = load_market_snapshot(conn, [i for i, _ in held.values()], day=day)
                loaded = load_batch(conn, users, snapshot=snap)
                b, versions = loaded.batch, loaded.criteria_versions
                docs = capture_json(
                    b,
                    fx,
                    market="NYSE",
                    market_date=day,
                    criteria_versions=versions,
                    holding_markets=loaded.holding_markets,
                )
                result = run_batch(b, fx)
                # SCORES_COMPUTED as the code of that revision wrote it: format 1.
                texts = score_json(result.scores, versions, format=1)
                conn.execute(
                    _old_events.insert(),
                    [
                        {
                            "correlation_id": cid,
                            "user_id": uuid.UUID(u),
                            "event_type": kind,
                            "payload": orjson.loads(text),
                            "created_at": at,
                        }
                        for kind, texts_of in (
                            ("INPUTS_CAPTURED", {u: t for u, (t, _) in docs.items()}),
                            ("SCORES_COMPUTED", texts.payloads),
                        )
                        for u, text in texts_of.items()
                    ],
                )
                h = result.scores.holdings
                rows = list(
                    zip(
                        h["user_id"],
                        h["asset_id"],
                        texts.score,
                        texts.max_possible_score,
                        strict=True,
                    )
                )
                conn.execute(
                    asset_scores_table.insert(),
                    [
                        {
                            "user_id": uuid.UUID(u),
                            "market_date": day,
                            "asset_id": uuid.UUID(a),
                            "market": "NYSE",
                            "score": s,
                            "max_possible_score": m,
                            "criteria_version": versions.get(u) or 0,
                            "breakdown": {},
                            "correlation_id": cid,
                            "computed_at": at,
                        }
                        for u, a, s, m in rows
                    ],
                )
                conn.execute(
                    _old_assets.insert(),
                    [
                        {
                            "asset_id": uuid.UUID(a),
                            "correlation_id": cid,
                            "user_id": uuid.UUID(u),
                            "score": s,
                            "created_at": at,
                        }
                        for u, a, s, _ in rows
                    ],
                )
            old[cid] = [(u, orjson.loads(t)) for u, (t, _) in docs.items()]
            expected = {(u, r.contribution) for u, r in result.recommendations.items()}

        with engine.connect() as conn:
            counts = {
                t.name: conn.execute(select(func.count()).select_from(t)).scalar_one()
                for t in (calculation_events_table, calculation_assets_table)
            }
        engine.dispose()
        migrate(fresh_url)
        engine = make_engine(fresh_url)

        s = asset_scores_table.c
        with engine.connect() as conn:
            assert set(conn.scalars(select(s.market_date).distinct())) == {nights[1]}
            assert (
                conn.execute(
                    select(func.count()).select_from(calculation_events_table)
                ).scalar_one()
                == counts["calculation_events"]
            )
            # Each narrow row of the asset-X index is now one element of its arrays (0007).
            assert _index_entries(conn) == counts["calculation_assets"]
            for cid, docs in old.items():
                stored = event_payloads(
                    conn,
                    correlation_id=cid,
                    event_type="INPUTS_CAPTURED",
                    user_ids=[uuid.UUID(u) for u, _ in docs],
                )
                assert stored == sorted(docs)
                scored = dict(
                    event_payloads(
                        conn,
                        correlation_id=cid,
                        event_type="SCORES_COMPUTED",
                        user_ids=[uuid.UUID(u) for u, _ in docs],
                    )
                )
                for uid, doc in stored:
                    assert [x.to_json() for x in replay(doc).values()] == scored[uid]["scores"]
        # The last old night's recommendations, replayed from its self-contained events.
        again, fx = batch_from_captured(stored)
        assert {(u, r.contribution) for u, r in run_batch(again, fx).recommendations.items()} == (
            expected
        )

        # The next night on the upgraded database.
        cid = uuid.uuid4()
        report = score_and_recommend(
            engine,
            market="NYSE",
            day=nights[2],
            markets=markets,
            correlation_id=cid,
            calculated_at=datetime.now(UTC),
            run_id="r",
        )
        assert report.users_succeeded > 0
        outcome = replay_sample(engine, correlation_id=cid, day=nights[2])
        assert outcome.checked and outcome.mismatches == []
        with engine.connect() as conn:
            assert set(conn.scalars(select(s.market_date).distinct())) == {nights[2]}
    finally:
        engine.dispose()
