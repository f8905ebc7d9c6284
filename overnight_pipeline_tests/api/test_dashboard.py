"""`GET /api/dashboard`: cache hit, miss → PostgreSQL → refill, Redis failures, corruption."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import orjson
import pybreaker
import pytest
import redis
from sqlalchemy import Engine, delete
from starlette.testclient import TestClient

from dashboard_api.dashboard import REDIS_ERRORS, redis_breaker
from overnight_pipeline.core.payloads import DashboardResponse
from overnight_pipeline.storage.cache import get_entry, write_entries
from overnight_pipeline.storage.cache_entries import recs_key, version_key
from overnight_pipeline.storage.models import recommendations_table
from overnight_pipeline_tests.api.conftest import FAST, bearer, token_for
from overnight_pipeline_tests.api.netfaults import black_hole, closed_port, freezable_proxy
from overnight_pipeline_tests.support.stored_results import Planner, insert_users

NewUser = Callable[..., Planner]
Cache = Callable[..., None]


def get_dashboard(client: TestClient, user: uuid.UUID) -> dict[str, Any]:
    response = client.get("/api/dashboard", headers=bearer(token_for(user)))
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    DashboardResponse.model_validate_json(response.content)  # the documented shape, exactly
    data: dict[str, Any] = response.json()["data"]
    return data


def expected(p: Planner) -> dict[str, Any]:
    recs = orjson.loads(p.recs_json)
    return {
        "recommendations": recs["recommendations"],
        "totalInvestable": "20000.00",
        "baseCurrency": "USD",
        "dataFreshness": recs["generatedAt"],
        "inputsChangedAt": None,  # no change recorded after it (test_inputs_changed.py)
    }


def without_source(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != "fromCache"}


def test_cache_hit_answers_from_redis_alone(
    client: TestClient, new_user: NewUser, cache: Cache
) -> None:
    # Not persisted at all: only Redis can produce this answer.
    p = new_user(persisted=False)
    cache(p)
    data = get_dashboard(client, p.user_id)
    assert data["fromCache"] is True
    assert without_source(data) == expected(p)
    assert len(data["recommendations"]) > 5


def test_cache_miss_falls_back_to_postgres_then_refills(
    client: TestClient,
    new_user: NewUser,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    p = new_user(hours_ago=3)
    assert get_entry(sync_redis, p.user_id, prefix=redis_prefix) is None
    first = get_dashboard(client, p.user_id)
    assert first["fromCache"] is False
    assert without_source(first) == expected(p)

    refilled = get_entry(sync_redis, p.user_id, prefix=redis_prefix)
    assert refilled is not None and refilled.total_investable == "20000.0000"
    assert refilled.version.startswith(p.market_date.isoformat())
    # What remains of its 24 h: about 21 h.
    ttl = sync_redis.ttl(recs_key(p.user_id, redis_prefix))
    assert 21 * 3600 - 60 <= ttl <= 21 * 3600
    assert abs(sync_redis.ttl(version_key(p.user_id, redis_prefix)) - ttl) <= 1

    second = get_dashboard(client, p.user_id)
    assert second["fromCache"] is True
    assert without_source(second) == without_source(first)


def test_a_day_old_result_is_served_but_not_cached(
    client: TestClient, new_user: NewUser, sync_redis: redis.Redis, redis_prefix: str
) -> None:
    p = new_user(hours_ago=30)
    assert get_dashboard(client, p.user_id)["fromCache"] is False
    assert get_entry(sync_redis, p.user_id, prefix=redis_prefix) is None


def test_fallback_serves_the_latest_market_date_not_a_later_backfill(
    client: TestClient, new_user: NewUser, pg_engine: Engine
) -> None:
    current = new_user(hours_ago=2, market_date=date.today())
    from overnight_pipeline_tests.support.stored_results import persist, planner

    backfill = planner(
        current.user_id,
        generated_at=current.generated_at + timedelta(hours=1),
        market_date=date.today() - timedelta(days=3),
        seed=5,
    )
    with pg_engine.begin() as conn:
        persist(conn, [backfill])
    data = get_dashboard(client, current.user_id)
    assert without_source(data) == expected(current)


def test_new_user_gets_an_empty_list_and_no_freshness(
    client: TestClient, pg_engine: Engine
) -> None:
    loaded = uuid.uuid4()
    with pg_engine.begin() as conn:
        insert_users(conn, [loaded])
    data = get_dashboard(client, loaded)
    assert data == {
        "recommendations": [],
        "totalInvestable": "1000.00",
        "baseCurrency": "USD",
        "dataFreshness": None,
        "fromCache": False,
        "inputsChangedAt": None,  # inserted directly: no change recorded
    }
    stranger = get_dashboard(client, uuid.uuid4())
    assert stranger["recommendations"] == [] and stranger["dataFreshness"] is None
    assert stranger["baseCurrency"] == "" and stranger["totalInvestable"] == "0"


def test_redis_on_a_closed_port_means_postgres_and_no_5xx(
    make_client: Callable[..., TestClient], new_user: NewUser
) -> None:
    client = make_client(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    p = new_user()
    for _ in range(3):
        data = get_dashboard(client, p.user_id)
        assert data["fromCache"] is False and without_source(data) == expected(p)
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {
        "status": "degraded",
        "checks": {"postgresql": "ok", "redis": "unreachable"},
    }


def test_redis_that_never_answers_costs_one_short_timeout(
    make_client: Callable[..., TestClient], new_user: NewUser
) -> None:
    p = new_user()
    with black_hole() as port:
        client = make_client(redis_url=f"redis://127.0.0.1:{port}/0")
        started = time.perf_counter()
        data = get_dashboard(client, p.user_id)
        first = time.perf_counter() - started
        assert data["fromCache"] is False and without_source(data) == expected(p)
        assert first < 2.0  # the read's 0.2 s timeout and the refill's
        # The third timeout in a row trips the breaker ...
        assert get_dashboard(client, p.user_id)["fromCache"] is False
        started = time.perf_counter()
        for _ in range(5):
            assert get_dashboard(client, p.user_id)["fromCache"] is False
        # ... after which Redis is skipped: five answers take less than two timeouts.
        assert time.perf_counter() - started < 2 * FAST.redis_timeout


def test_redis_that_stops_responding_mid_flight_falls_back_then_recovers(
    make_client: Callable[..., TestClient], new_user: NewUser, cache: Cache
) -> None:
    p = new_user()
    cache(p)
    with freezable_proxy() as proxy:
        client = make_client(redis_url=f"redis://127.0.0.1:{proxy.port}/0")
        assert get_dashboard(client, p.user_id)["fromCache"] is True
        proxy.freeze()
        data = get_dashboard(client, p.user_id)
        assert data["fromCache"] is False and without_source(data) == expected(p)
        assert client.get("/readyz").json()["status"] == "degraded"
        proxy.thaw()
        time.sleep(FAST.redis_cooldown + 0.1)
        assert get_dashboard(client, p.user_id)["fromCache"] is True


CORRUPTIONS: dict[str, Callable[[Planner], bytes]] = {
    "not json": lambda p: b'{"schemaVersion": 1, "userId": "' + p.recs_json[:40],
    "unknown schema version": lambda p: p.recs_json.replace(
        b'"schemaVersion":2', b'"schemaVersion":99'
    ),
    "someone else's document": lambda p: p.recs_json.replace(
        str(p.user_id).encode(), str(uuid.uuid4()).encode()
    ),
    "not an object": lambda p: b"[1, 2, 3]",
    "recommendations not a list": lambda p: p.recs_json.replace(
        b'"recommendations":[', b'"recommendations":{"x":[', 1
    ).replace(b'],"portfolioSummary"', b']},"portfolioSummary"', 1),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_corrupted_cache_payload_falls_back_and_is_repaired(
    corruption: str,
    client: TestClient,
    new_user: NewUser,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    p = new_user()
    bad = p.cache_entry()
    bad = type(bad)(**{**bad.__dict__, "recs_json": CORRUPTIONS[corruption](p)})
    write_entries(sync_redis, [bad], prefix=redis_prefix)
    data = get_dashboard(client, p.user_id)
    assert data["fromCache"] is False and without_source(data) == expected(p)
    # Same version as the persisted row, so the refill replaced the bad document.
    assert get_dashboard(client, p.user_id)["fromCache"] is True


def test_an_entry_without_total_investable_is_completed_from_postgres(
    client: TestClient, new_user: NewUser, sync_redis: redis.Redis, redis_prefix: str
) -> None:
    p = new_user()
    entry = p.cache_entry()
    write_entries(
        sync_redis,
        [type(entry)(**{**entry.__dict__, "total_investable": None})],
        prefix=redis_prefix,
    )
    assert get_dashboard(client, p.user_id)["fromCache"] is False
    assert get_dashboard(client, p.user_id)["fromCache"] is True


def test_postgres_down_on_a_miss_is_a_503_problem_not_a_500(
    make_client: Callable[..., TestClient], new_user: NewUser, cache: Cache
) -> None:
    dead_pg = f"postgresql+psycopg://root@127.0.0.1:{closed_port()}/nowhere"
    client = make_client(database_url=dead_pg)
    response = client.get("/api/dashboard", headers=bearer(token_for(uuid.uuid4())))
    assert response.status_code == 503
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["detail"] == "the database is temporarily unavailable"
    assert response.headers["retry-after"] == "5"
    # A cached user is still served: the hot path never touches PostgreSQL.
    p = new_user(persisted=False)
    cache(p)
    data = get_dashboard(client, p.user_id)
    assert data["fromCache"] is True
    ready = client.get("/readyz")
    assert ready.status_code == 503 and ready.json()["status"] == "unavailable"


def test_a_persisted_row_in_an_unknown_format_is_a_503(
    client: TestClient, new_user: NewUser, pg_engine: Engine
) -> None:
    p = new_user()
    with pg_engine.begin() as conn:
        conn.execute(
            recommendations_table.update()
            .where(recommendations_table.c.user_id == p.user_id)
            .values(payload={"schemaVersion": 2, "userId": str(p.user_id)})
        )
    response = client.get("/api/dashboard", headers=bearer(token_for(p.user_id)))
    assert response.status_code == 503
    assert "format this server cannot read" in response.json()["detail"]
    with pg_engine.begin() as conn:
        conn.execute(
            delete(recommendations_table).where(recommendations_table.c.user_id == p.user_id)
        )


def test_breaker_trips_after_failures_in_a_row_and_lets_one_probe_through() -> None:
    breaker = redis_breaker(0.2, threshold=3)

    def allowed(outcome: BaseException | None = None) -> bool:
        """One call through the breaker: False when it refused the call."""
        try:
            with breaker.calling():
                if outcome is not None:
                    raise outcome
        except pybreaker.CircuitBreakerError:
            return False
        except REDIS_ERRORS:
            pass
        return True

    assert allowed(TimeoutError()) and allowed(TimeoutError())
    assert allowed()  # a sporadic deadline miss between successes never trips it
    assert allowed(TimeoutError()) and allowed(TimeoutError())
    assert allowed(OSError("down"))  # the third in a row trips it
    assert not allowed()
    time.sleep(0.25)
    with pytest.raises(OSError), breaker.calling():  # the probe
        assert not allowed()  # everyone else waits for it
        raise OSError("still down")
    assert not allowed()  # open again for another cool-down
    time.sleep(0.25)
    assert allowed()  # this probe succeeds: closed
    assert allowed() and allowed()


def test_the_embedded_sqlite_database_serves_the_fallback_too(
    make_client: Callable[..., TestClient], sqlite_url: str, sqlite_engine: Engine
) -> None:
    """`make demo` keeps the app database in SQLite: the same API runs on it."""
    from overnight_pipeline_tests.support.stored_results import persist, planner

    p = planner(uuid.uuid4(), generated_at=datetime.now(UTC) - timedelta(hours=1))
    with sqlite_engine.begin() as conn:
        insert_users(conn, [p.user_id])
        persist(conn, [p])
    client = make_client(database_url=sqlite_url)
    first = get_dashboard(client, p.user_id)
    assert first["fromCache"] is False and without_source(first) == expected(p)
    assert get_dashboard(client, p.user_id)["fromCache"] is True
    # Readiness names the database this server really uses: no "postgresql" key here.
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"sqlite": "ok", "redis": "ok"},
    }


def test_readiness_names_postgresql_when_the_database_is_postgresql(client: TestClient) -> None:
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"postgresql": "ok", "redis": "ok"},
    }
