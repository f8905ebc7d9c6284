from __future__ import annotations

from collections import Counter
from datetime import date
from decimal import Decimal

from sqlalchemy import Connection, select, text

from overnight_pipeline.core.load_fields import UserIn
from overnight_pipeline.seed import seed
from overnight_pipeline.storage.criteria import active_criteria
from overnight_pipeline.storage.models import User

AS_OF = date(2026, 11, 30)
USER_TABLES = ("users", "asset_classes", "holdings", "criteria_versions", "criteria_rules")


def _dump(conn: Connection) -> dict[str, list[tuple]]:
    out = {}
    for table in USER_TABLES:
        cols = [
            c
            for c in conn.execute(text(f"SELECT * FROM {table} LIMIT 0")).keys()
            if c not in ("created_at", "updated_at")
        ]
        rows = conn.execute(text(f"SELECT {', '.join(cols)} FROM {table}")).all()
        out[table] = sorted(tuple(str(v) for v in r) for r in rows)
    return out


def test_same_seed_gives_the_same_data(db_conn: Connection) -> None:
    before = len(_dump(db_conn)["users"])
    seed(db_conn, users=40, seed=7, as_of=AS_OF)
    first = _dump(db_conn)
    seed(db_conn, users=40, seed=7, as_of=AS_OF)  # re-seeding replaces, never duplicates
    assert _dump(db_conn) == first
    assert len(first["users"]) == before + 40


def test_different_seeds_give_different_users(db_conn: Connection) -> None:
    # Relative counts: rows other tests committed to the session database are not ours.
    before = db_conn.execute(text("SELECT count(*) FROM users")).scalar()
    seed(db_conn, users=5, seed=1, as_of=AS_OF)
    seed(db_conn, users=5, seed=2, as_of=AS_OF)
    assert db_conn.execute(text("SELECT count(*) FROM users")).scalar() == before + 10


def test_seeded_users_are_shaped_like_real_planners(db_conn: Connection) -> None:
    report = seed(db_conn, users=300, seed=11, as_of=AS_OF)
    assert report.users == 300
    per_user = dict(
        db_conn.execute(text("SELECT user_id, count(*) FROM holdings GROUP BY user_id")).all()
    )
    assert len(per_user) == 300 and all(10 <= n <= 50 for n in per_user.values())
    classes = db_conn.execute(
        text(
            "SELECT user_id, count(*), sum(CAST(target_min AS NUMERIC)), sum(CAST(target_max AS NUMERIC))"
            " FROM asset_classes GROUP BY user_id"
        )
    ).all()
    assert all(3 <= n <= 6 and Decimal(lo) <= 100 <= Decimal(hi) for _, n, lo, hi in classes)
    rules = dict(
        db_conn.execute(
            text(
                "SELECT v.user_id, count(*) FROM criteria_rules r JOIN criteria_versions v"
                " ON v.id = r.criteria_version_id GROUP BY v.user_id"
            )
        ).all()
    )
    assert all(5 <= n <= 15 for n in rules.values())
    markets = Counter(
        db_conn.execute(
            text("SELECT a.market FROM holdings h JOIN assets a ON a.id = h.asset_id")
        ).scalars()
    )
    assert set(markets) == {"NYSE", "NASDAQ", "B3", "LSE", "TSE", "XETRA"}
    two_markets = db_conn.execute(
        text(
            "SELECT count(*) FROM (SELECT h.user_id FROM holdings h JOIN assets a ON a.id = h.asset_id"
            " GROUP BY h.user_id HAVING count(DISTINCT a.market) > 1) t"
        )
    ).scalar()
    assert 0.15 * 300 < two_markets < 0.45 * 300
    bases = Counter(db_conn.execute(text("SELECT base_currency FROM users")).scalars())
    assert len(bases) >= 4
    nulls = db_conn.execute(
        text("SELECT count(*) FROM asset_fundamentals WHERE dividend_yield IS NULL")
    ).scalar()
    total = db_conn.execute(text("SELECT count(*) FROM asset_fundamentals")).scalar()
    assert 0 < nulls < total / 3


def test_seeded_criteria_are_valid_documents(db_conn: Connection) -> None:
    seed(db_conn, users=20, seed=3, as_of=AS_OF)
    ids = list(db_conn.execute(select(User.id)).scalars())
    criteria = active_criteria(db_conn, ids)
    assert len(criteria) == 20
    for version, rules in criteria.values():
        assert version == 1
        UserIn.model_validate(
            {
                "id": ids[0],
                "baseCurrency": "USD",
                "criteria": [r.model_dump(by_alias=True, mode="json") for r in rules],
            }
        )
