"""Read-side queries on PostgreSQL (and, where portable, SQLite)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, insert, text

from overnight_pipeline.storage.models import overnight_job_runs_table
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.queries import (
    CalculationCursor,
    asset_id_for,
    calculations_for_asset,
    calculations_statement,
    newest_recommendation,
    recent_job_runs,
    user_profile,
)
from overnight_pipeline_tests.support.stored_results import (
    insert_asset,
    insert_calculation,
    insert_users,
    persist,
    planner,
)

T0 = datetime(2026, 11, 30, 9, 30, tzinfo=UTC)


def test_newest_recommendation_is_the_latest_market_date_not_the_latest_write(
    db_conn: Connection,
) -> None:
    user = uuid.uuid4()
    insert_users(db_conn, [user])
    assert newest_recommendation(db_conn, user_id=user) is None
    nov30 = planner(user, generated_at=T0, market_date=date(2026, 11, 30), seed=1)
    # A backfill of an older date, generated later.
    nov27 = planner(user, generated_at=T0 + timedelta(hours=6), market_date=date(2026, 11, 27))
    persist(db_conn, [nov30, nov27])
    row = newest_recommendation(db_conn, user_id=user)
    assert row is not None
    assert row.market_date == date(2026, 11, 30) and row.generated_at == T0
    assert row.total_investable == Decimal("20000.00") and row.base_currency == "USD"
    from overnight_pipeline.core.payloads import CachedPortfolioSummary, CachedRecommendations

    assert CachedRecommendations.model_validate_json(row.payload_json) == nov30.recs
    assert CachedPortfolioSummary.model_validate_json(row.portfolio_json) == nov30.portfolio
    assert newest_recommendation(db_conn, user_id=uuid.uuid4()) is None


def test_user_profile(db_conn: Connection) -> None:
    user = uuid.uuid4()
    insert_users(db_conn, [user])
    profile = user_profile(db_conn, user_id=user)
    assert profile is not None
    assert (profile.base_currency, profile.default_contribution) == ("USD", Decimal("1000"))
    assert user_profile(db_conn, user_id=uuid.uuid4()) is None


def test_calculations_for_asset_newest_first_by_user_and_paginated(db_conn: Connection) -> None:
    ko = insert_asset(db_conn, "NYSE", "KO")
    pep = insert_asset(db_conn, "NYSE", "PEP")
    me, other = uuid.uuid4(), uuid.uuid4()
    mine = [
        insert_calculation(
            db_conn, asset_id=ko, user_id=me, score=str(i), calculated_at=T0 + timedelta(days=i)
        )
        for i in range(5)
    ]
    # Same instant twice: the correlation id breaks the tie, so paging never skips a row.
    tie = [
        insert_calculation(
            db_conn, asset_id=ko, user_id=me, score="9", calculated_at=T0 + timedelta(days=9)
        )
        for _ in range(2)
    ]
    insert_calculation(
        db_conn, asset_id=ko, user_id=other, score="7", calculated_at=T0 + timedelta(days=3)
    )
    insert_calculation(db_conn, asset_id=pep, user_id=me, score="1", calculated_at=T0)
    assert asset_id_for(db_conn, market="NYSE", symbol="KO") == ko
    assert asset_id_for(db_conn, market="NYSE", symbol="ko") is None

    everything = calculations_for_asset(db_conn, asset_id=ko, limit=100)
    assert len(everything) == 8
    assert [c.calculated_at for c in everything] == sorted(
        (c.calculated_at for c in everything), reverse=True
    )

    pages: list[uuid.UUID] = []
    cursor: CalculationCursor | None = None
    while True:
        page = calculations_for_asset(db_conn, asset_id=ko, user_id=me, limit=3, before=cursor)
        assert all(c.user_id == me and c.asset_id == ko for c in page)
        pages.extend(c.correlation_id for c in page)
        if len(page) < 3:
            break
        cursor = page[-1].cursor
    assert pages[:2] == sorted(tie, reverse=True)
    assert pages[2:] == mine[::-1]
    with pytest.raises(ValueError, match="limit must be an integer from 1 to 1000, got 0"):
        calculations_for_asset(db_conn, asset_id=ko, limit=0)


def test_asset_query_is_served_by_the_index(pg_conn: Connection) -> None:
    ko = insert_asset(pg_conn, "NYSE", "KO")
    insert_calculation(pg_conn, asset_id=ko, user_id=uuid.uuid4(), score="1", calculated_at=T0)
    # Many users' calculations of the asset, night after night, and their statistics: the
    # planner then sees what a real table looks like (one user's rows are a few of many).
    ensure_months(pg_conn, [T0 - timedelta(days=n) for n in range(21)])
    pg_conn.execute(
        text(
            "INSERT INTO calculation_assets (asset_id, correlation_id, calculated_at, bucket,"
            " user_ids, scores)"
            " SELECT asset, cid, at, get_byte(uuid_send(u), 0) >> 4, array_agg(u), array_agg(1)"
            " FROM (SELECT CASE WHEN a = 0 THEN :ko ELSE md5('a' || a)::uuid END AS asset,"
            " md5('c' || n)::uuid AS cid, :t0 - n * interval '1 day' AS at,"
            " md5('u' || u)::uuid AS u"
            " FROM generate_series(1, 20) n, generate_series(1, 200) u, generate_series(0, 9) a)"
            " AS narrow GROUP BY 1, 2, 3, 4"
        ),
        {"ko": ko, "t0": T0},
    )
    pg_conn.execute(text("ANALYZE calculation_assets"))
    # A small table is cheaper to scan; forbid that to see the plan a big one gets.
    pg_conn.execute(text("SET LOCAL enable_seqscan = off"))
    for user in (None, uuid.uuid4()):
        before = CalculationCursor(T0, uuid.uuid4(), uuid.uuid4())
        stmt = calculations_statement(asset_id=ko, user_id=user, limit=20, before=before)
        sql = stmt.compile(dialect=pg_conn.dialect, compile_kwargs={"literal_binds": True})
        plan = "\n".join(pg_conn.exec_driver_sql(f"EXPLAIN {sql}").scalars())
        # The operator's page from the index on (asset, time, calculation, bucket); one
        # user's calculations from the rows of its bucket, by the index on (asset, bucket,
        # time, calculation), in the page's order (each monthly partition's copy of the table's index, named by PostgreSQL
        # after its columns, truncated).
        index = (
            "asset_id_calculated_at_correlat_idx"
            if user is None
            else "asset_id_bucket_calculated_at_c"
        )
        assert index in plan, plan
        assert "Seq Scan" not in plan, plan
        assert "LIKE" not in str(sql).upper()


def test_recent_job_runs_filters_and_orders(db_conn: Connection) -> None:
    def run(market: str, status: str, hours: int) -> dict[str, object]:
        return {
            "id": uuid.uuid4(),
            "job_type": "overnight",
            "status": status,
            "market": market,
            "market_date": date(2026, 11, 30),
            "started_at": T0 + timedelta(hours=hours),
            "correlation_id": uuid.uuid4(),
            "users_processed": hours,
            "users_failed": 0,
        }

    ensure_months(db_conn, [T0, T0 + timedelta(hours=4)])
    rows = [
        run("NYSE", "completed", 1),
        run("NYSE", "failed", 2),
        run("B3", "completed", 3),
        run("TSE", "partial", 4),
    ]
    db_conn.execute(insert(overnight_job_runs_table), rows)
    # Only these four: other tests of the session may have committed runs of their own.
    mine = {r["correlation_id"] for r in rows}

    def of_mine(found: list[Any]) -> list[Any]:
        return [r for r in found if r.correlation_id in mine]

    runs = of_mine(recent_job_runs(db_conn, limit=100))
    assert [r.users_processed for r in runs] == [4, 3, 2, 1]
    nyse = of_mine(recent_job_runs(db_conn, market="NYSE", limit=100))
    assert [r.market for r in nyse] == ["NYSE"] * 2
    nyse_ok = of_mine(recent_job_runs(db_conn, market="NYSE", status="completed", limit=100))
    assert [(r.market, r.status) for r in nyse_ok] == [("NYSE", "completed")]
    older = of_mine(recent_job_runs(db_conn, limit=100, before=T0 + timedelta(hours=3)))
    assert [r.users_processed for r in older] == [2, 1]
    assert len(recent_job_runs(db_conn, limit=1)) == 1
