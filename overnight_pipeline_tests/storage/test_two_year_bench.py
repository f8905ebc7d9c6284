"""The two-year benchmark's functions at a tiny scale (`bench/two_year_bench.py`, issue 15),
so that its code cannot rot: 20 users × 3 months of nights, three of them by the real write
path and the others copied server-side. A copied night stores what its real night stores,
the asset-X pages come newest first and their keyset cursors reach every row once, the
night replayed is exact, and retention drops exactly the oldest month's partitions.

The nights are written once for the module; only the retention test touches the oldest
month (it drops it), the others read the later months, so their order does not matter."""

from __future__ import annotations

import importlib.util
import random
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import Engine, text

from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.seed import seed
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.partitions import PARTITIONED, existing, month_of
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

BENCH = Path(__file__).resolve().parents[2] / "bench" / "two_year_bench.py"
NOW = datetime(2026, 12, 1, tzinfo=UTC)
USERS = 20
PAGE_OF_SEVEN = 7  # pages small enough that every walk takes several


def _load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("two_year_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@dataclass
class TwoYears:
    bench: Any
    engine: Engine
    nights: list[Any]
    written: Any


@pytest.fixture(scope="module")
def two_years() -> Iterator[TwoYears]:
    bench = _load_bench()
    url = create_pg_database("overnight_two_years")
    migrate(url)
    engine = make_engine(url)
    try:
        nights = bench.plan_nights(NOW, months=3, real=3, replay_months=2)
        with engine.begin() as conn:
            seed(
                conn,
                users=USERS,
                seed=5,
                as_of=nights[0].day,
                markets=tuple(m for m in DEFAULT_MARKETS if m.code == "NYSE"),
            )
        written = bench.write_nights(engine, nights)
        bench.maintain(url)
        yield TwoYears(bench, engine, nights, written)
    finally:
        engine.dispose()
        drop_pg_database(url)


def _later(two_years: TwoYears) -> list[Any]:
    """The nights after the oldest month (the one the retention test drops)."""
    oldest = month_of(two_years.nights[0].at)
    return [n for n in two_years.nights if month_of(n.at) != oldest]


def test_nights_cover_the_months_with_real_ones_where_replay_and_copies_need_them(
    two_years: TwoYears,
) -> None:
    nights = two_years.nights
    assert [n.day for n in nights] == sorted({n.day for n in nights})
    assert nights[0].real and nights[-1].real and sum(n.real for n in nights) == 3
    assert {month_of(n.at) for n in nights} == {datetime(2026, m, 1).date() for m in (9, 10, 11)}
    assert all(n.at.hour == 23 and n.at.date() == n.day for n in nights)
    replayed = two_years.bench.night_near(nights, two_years.bench.months_back(NOW, 2), real=True)
    assert month_of(replayed.at) == datetime(2026, 10, 1).date()
    assert two_years.written.users > 0


def test_a_copied_night_stores_what_its_real_night_stores(two_years: TwoYears) -> None:
    bench, later = two_years.bench, _later(two_years)
    real = next(n for n in later if n.real)
    copy = next(n for n in later if not n.real and n.at > real.at)
    with two_years.engine.connect() as conn:
        assert bench.stored_event_bytes(conn, copy) == bench.stored_event_bytes(conn, real)

        def per_night(sql: str) -> list[int]:
            return [
                conn.execute(text(sql), {"cid": n.correlation_id, "at": n.at}).scalar_one()
                for n in (real, copy)
            ]

        for table in ("calculation_events", "calculation_assets"):
            counts = per_night(
                f"SELECT count(*) FROM {table} WHERE correlation_id = :cid AND calculated_at = :at"
            )
            assert counts[0] == counts[1] > 0, table
        recommended = per_night("SELECT count(*) FROM recommendations WHERE correlation_id = :cid")
        assert recommended[0] == recommended[1] > 0
        assert per_night(
            "SELECT count(*) FROM overnight_job_runs WHERE correlation_id = :cid"
            " AND started_at = :at"
        ) == [1, 1]
        # One market snapshot per night, each its own hash; criteria once per month.
        markets = conn.execute(
            text(
                "SELECT month, count(*), count(DISTINCT hash) FROM calculation_snapshots"
                " WHERE kind = 'market' GROUP BY month ORDER BY month"
            )
        ).all()
        nights_per_month: dict[Any, int] = {}
        for n in two_years.nights:
            nights_per_month[month_of(n.at)] = nights_per_month.get(month_of(n.at), 0) + 1
        assert [(m, c, d) for m, c, d in markets] == [
            (m, c, c) for m, c in sorted(nights_per_month.items())
        ]


def test_asset_x_pages_come_newest_first_and_keyset_cursors_reach_every_row(
    two_years: TwoYears,
) -> None:
    bench, nights = two_years.bench, two_years.nights
    with two_years.engine.connect() as conn:
        operator, user = bench.sample_cases(conn, nights[-1], samples=10, rng=random.Random(1))
        deep_at = bench.months_back(NOW, 1)
        for label, cases in (
            ("operator", operator),
            ("user", user),
            ("operator deep", bench.deep(conn, operator, deep_at)),
            ("user deep", bench.deep(conn, user, deep_at)),
        ):
            timed = bench.time_cases(conn, label, cases)
            assert len(timed.ms) == 10, label
            assert timed.problems == [], label
        for case in (operator[0], user[0]):
            first = bench.page(conn, case)
            assert first[0].calculated_at == nights[-1].at
            rows = bench.walk(conn, case, limit=PAGE_OF_SEVEN)
            keys = [bench._key(r) for r in rows]
            assert keys == sorted(set(keys), reverse=True)
            where = "asset_id = :a" + ("" if case.user_id is None else " AND u.user_id = :u")
            count = conn.execute(
                text(
                    "SELECT count(*) FROM calculation_assets ca,"
                    f" unnest(ca.user_ids) AS u(user_id) WHERE {where}"
                ),
                {"a": case.asset_id, "u": case.user_id},
            ).scalar_one()
            assert len(rows) == count > PAGE_OF_SEVEN
        plan = bench.explain(conn, operator[0])
        assert "Index Scan" in plan and "asset_id_calculated_at_correlat_idx" in plan, plan


def test_the_replayed_night_is_exact(two_years: TwoYears) -> None:
    bench = two_years.bench
    replayed = bench.night_near(_later(two_years), bench.months_back(NOW, 2), real=True)
    outcome, seconds = bench.replay(two_years.engine, replayed, users=two_years.written.users)
    assert outcome.mismatches == []
    assert len(outcome.checked) == outcome.users == two_years.written.users
    assert seconds > 0


def test_retention_drops_exactly_the_oldest_month(two_years: TwoYears) -> None:
    bench, nights = two_years.bench, two_years.nights
    oldest = month_of(nights[0].at)
    expiry = bench.expire_oldest_month(two_years.engine, nights)
    assert sorted(expiry.dropped) == sorted(f"{t}_p{oldest:%Y_%m}" for t in PARTITIONED)
    assert expiry.exact
    kept = sorted(expiry.before)[1]
    assert all(expiry.before[kept].values()) and all(expiry.before[oldest].values())
    with two_years.engine.connect() as conn:
        months = {m for _, m in existing(conn)}
    assert oldest not in months and kept in months
