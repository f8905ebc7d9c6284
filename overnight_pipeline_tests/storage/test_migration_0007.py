"""Revision 0007 (issue 25) with data: nights of the asset-X index in its narrow shape (one
row per asset, calculation and user) and scores under foreign keys, upgraded to the array
shape and back, on PostgreSQL and SQLite."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from sqlalchemy import (
    Date,
    Engine,
    Integer,
    String,
    Uuid,
    column,
    desc,
    inspect,
    select,
    table,
    text,
)

from overnight_pipeline.storage.db import downgrade, make_engine, migrate
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.queries import CalculationCursor, calculations_for_asset
from overnight_pipeline.storage.types import Document, ExactDecimal, UTCDateTime

# The two tables as revision 0006 wrote them (the models are today's).
_narrow = table(
    "calculation_assets",
    column("asset_id", Uuid()),
    column("correlation_id", Uuid()),
    column("user_id", Uuid()),
    column("calculated_at", UTCDateTime()),
    column("score", ExactDecimal(16, 4)),
)
_users = table("users", column("id", Uuid()), column("base_currency", String()))
_scores = table(
    "asset_scores",
    column("user_id", Uuid()),
    column("asset_id", Uuid()),
    column("market_date", Date()),
    column("market", String()),
    column("score", ExactDecimal(16, 4)),
    column("max_possible_score", ExactDecimal(16, 4)),
    column("criteria_version", Integer()),
    column("breakdown", Document),
    column("correlation_id", Uuid()),
    column("computed_at", UTCDateTime()),
)
_assets = table(
    "assets",
    column("id", Uuid()),
    column("market", String()),
    column("symbol", String()),
    column("currency", String()),
)
Row = tuple[uuid.UUID, uuid.UUID, uuid.UUID, Decimal, datetime]


def _old_night(engine: Engine) -> tuple[list[uuid.UUID], list[uuid.UUID], list[Row]]:
    """Users, assets and the narrow index rows of four calculations over two months (two at
    the same instant), each user holding two or three of the assets."""
    rng = random.Random(7)
    users = [uuid.UUID(int=rng.getrandbits(128), version=4) for _ in range(260)]
    assets = [uuid.uuid5(uuid.NAMESPACE_URL, f"asset:{i}") for i in range(4)]
    t0 = datetime(2026, 11, 29, 22, 0, tzinfo=UTC)
    stamps = [t0, t0 + timedelta(days=1), t0 + timedelta(days=2), t0 + timedelta(days=2)]
    rows: list[Row] = []
    for at in stamps:
        cid = uuid.uuid4()
        for u in users:
            for a in rng.sample(assets, rng.choice((2, 3))):
                rows.append((a, cid, u, Decimal(rng.randrange(0, 100_000)) / 1000, at))
    with engine.begin() as conn:
        ensure_months(conn, stamps)
    with engine.begin() as conn:
        conn.execute(
            _assets.insert(),
            [
                {"id": a, "market": "NYSE", "symbol": f"S{i}", "currency": "USD"}
                for i, a in enumerate(assets)
            ],
        )
        conn.execute(_users.insert(), [{"id": u, "base_currency": "USD"} for u in users])
        conn.execute(
            _narrow.insert(),
            [
                {"asset_id": a, "correlation_id": c, "user_id": u, "score": s, "calculated_at": t}
                for a, c, u, s, t in rows
            ],
        )
        # Each user's current scores: those of the last calculation (a calculation replaces
        # all of a user's rows).
        last = {(u, a): (s, c, t) for a, c, u, s, t in rows if c == cid}
        conn.execute(
            _scores.insert(),
            [
                {
                    "user_id": u,
                    "asset_id": a,
                    "market_date": t.date(),
                    "market": "NYSE",
                    "score": s,
                    "max_possible_score": Decimal(100),
                    "criteria_version": 1,
                    "breakdown": {},
                    "correlation_id": c,
                    "computed_at": t,
                }
                for (u, a), (s, c, t) in last.items()
            ],
        )
    return users, assets, rows


def _scores_now(engine: Engine) -> set[tuple[object, ...]]:
    c = _scores.c
    with engine.connect() as conn:
        return set(conn.execute(select(c.user_id, c.asset_id, c.score, c.correlation_id)))


def _old_query(engine: Engine, asset_id: uuid.UUID, user_id: uuid.UUID | None) -> list[Row]:
    """What revision 0006's `calculations_statement` returned, in its order."""
    c = _narrow.c
    stmt = select(c.asset_id, c.correlation_id, c.user_id, c.score, c.calculated_at).where(
        c.asset_id == asset_id
    )
    if user_id is not None:
        stmt = stmt.where(c.user_id == user_id)
    stmt = stmt.order_by(desc(c.calculated_at), desc(c.correlation_id), desc(c.user_id))
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]  # type: ignore[misc]


def _paged(engine: Engine, asset_id: uuid.UUID, user_id: uuid.UUID | None, limit: int) -> list[Row]:
    """Every page of today's query, each after the last row's cursor."""
    out: list[Row] = []
    cursor: CalculationCursor | None = None
    with engine.connect() as conn:
        while True:
            page = calculations_for_asset(
                conn, asset_id=asset_id, user_id=user_id, limit=limit, before=cursor
            )
            out.extend(
                (c.asset_id, c.correlation_id, c.user_id, c.score, c.calculated_at) for c in page
            )
            if len(page) < limit:
                return out
            cursor = page[-1].cursor


def test_0007_turns_old_nights_into_arrays_and_back(fresh_url: str) -> None:
    migrate(fresh_url, "0006")
    engine = make_engine(fresh_url)
    try:
        users, assets, rows = _old_night(engine)
        probes = [None, *users[:3]]
        before = {(a, u): _old_query(engine, a, u) for a in assets for u in probes}
        assert sum(len(found) for (_, u), found in before.items() if u is None) == len(rows)
        fks = {fk["referred_table"] for fk in inspect(engine).get_foreign_keys("asset_scores")}
        assert fks == {"users", "assets"}
        scores = _scores_now(engine)
        engine.dispose()

        migrate(fresh_url)
        engine = make_engine(fresh_url)
        assert inspect(engine).get_foreign_keys("asset_scores") == []
        # 0009: the scores are one row a user in `user_scores`, `asset_scores` its view.
        assert _scores_now(engine) == scores
        assert "asset_scores" in inspect(engine).get_view_names()
        with engine.connect() as conn:
            per_user = conn.execute(text("SELECT count(*) FROM user_scores")).scalar_one()
        assert per_user == len({u for u, *_ in scores})
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT count(*) FROM calculation_assets")).scalar_one()
        assert stored < len(rows) / 10  # arrays: 16 buckets × 4 assets × 4 calculations
        for (asset, user), found in before.items():
            assert _paged(engine, asset, user, 7 if user is None else 2) == found
            assert _paged(engine, asset, user, 1000) == found

        # Downgrade: the narrow rows again, the same ones.
        engine.dispose()
        downgrade(fresh_url, "0006")
        engine = make_engine(fresh_url)
        for (asset, user), found in before.items():
            assert _old_query(engine, asset, user) == found
        fks = {fk["referred_table"] for fk in inspect(engine).get_foreign_keys("asset_scores")}
        assert fks == {"users", "assets"}
        assert _scores_now(engine) == scores
    finally:
        engine.dispose()
