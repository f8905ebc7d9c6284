"""`inputsChangedAt` (BEHAVIOUR §6, issue 23 item 4): after `overnight load` changes a user's
inputs, the dashboard serves the last result flagged with the change time, from the cache
(the `changed:` marker in the same MGET) and from PostgreSQL (`user_changes`) alike, until a
result generated after the change lands; never a 5xx, never another user's flag."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from dashboard_api.auth import COOKIE_NAME
from overnight_pipeline.cli import main
from overnight_pipeline.settings import Settings, get_settings
from overnight_pipeline.storage.cache_entries import (
    changed_key,
    portfolio_key,
    recs_key,
    version_key,
)
from overnight_pipeline.storage.freshness import mark_changed, stamp
from overnight_pipeline.storage.models import user_changes_table
from overnight_pipeline_tests.api.conftest import bearer, token_for
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.support.stored_results import Planner, persist, planner

NewUser = Callable[..., Planner]
Cache = Callable[..., None]
Overnight = Callable[..., tuple[int, str, str]]


def dashboard(client: TestClient, user: uuid.UUID) -> dict[str, Any]:
    response = client.get("/api/dashboard", headers=bearer(token_for(user)))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def badge(client: TestClient, user: uuid.UUID) -> tuple[str, str]:
    client.cookies.set(COOKIE_NAME, token_for(user))
    page = client.get("/", follow_redirects=False)
    assert page.status_code == 200, page.text[:300]
    found = re.search(r'<span class="badge (\w+)" id="freshness"[^>]*>([^<]*)</span>', page.text)
    assert found, page.text[:500]
    return found.group(1), found.group(2)


def load_file(tmp_path: Path, user: uuid.UUID, contribution: str) -> Path:
    """A file with one user holding one asset: loading it over a planner's user changes them."""
    symbol = f"CHG{user.hex[:6].upper()}"
    doc = {
        "assets": [{"market": "NYSE", "symbol": symbol, "currency": "USD"}],
        "users": [
            {
                "id": str(user),
                "baseCurrency": "USD",
                "defaultContribution": contribution,
                "active": True,
                "assetClasses": [{"name": "US Stocks", "targetMin": "0", "targetMax": "100"}],
                "holdings": [
                    {
                        "market": "NYSE",
                        "symbol": symbol,
                        "quantity": "10",
                        "assetClass": "US Stocks",
                    }
                ],
            }
        ],
    }
    path = tmp_path / f"{user}-{contribution}.json"
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def overnight(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Overnight]:
    """`overnight ...` in this process, on the test's database and Redis prefix (or
    `REDIS_URL=`)."""

    def run(*args: str, redis_url: str | None = None) -> tuple[int, str, str]:
        monkeypatch.setenv("DATABASE_URL", settings.database_url)
        monkeypatch.setenv("REDIS_URL", redis_url or settings.redis_url)
        monkeypatch.setenv("CACHE_PREFIX", settings.cache_prefix)
        get_settings.cache_clear()
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    yield run
    get_settings.cache_clear()


def last_change(engine: Engine, user: uuid.UUID) -> str:
    with engine.connect() as conn:
        when = conn.scalar(
            select(func.max(user_changes_table.c.changed_at)).where(
                user_changes_table.c.user_id == user
            )
        )
    assert when is not None
    return stamp(when)


def test_a_change_flags_the_served_result_until_a_newer_one_lands(
    client: TestClient,
    make_client: Callable[..., TestClient],
    new_user: NewUser,
    cache: Cache,
    overnight: Overnight,
    tmp_path: Path,
    pg_engine: Engine,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    p, other = new_user(hours_ago=3, seed=1), new_user(hours_ago=3, seed=2)
    cache(p, other)
    before = dashboard(client, p.user_id)
    assert before["fromCache"] is True and before["inputsChangedAt"] is None
    assert badge(client, p.user_id) == ("fresh", "Fresh · generated 3 hours ago")

    changed = load_file(tmp_path, p.user_id, "5000.00")
    code, out, err = overnight("load", str(changed))
    assert (code, err.count("warning")) == (0, 0) and "1 user(s) changed" in out, err
    when = last_change(pg_engine, p.user_id)
    data = dashboard(client, p.user_id)
    # Last night's result, still served from the cache, now saying the inputs changed since.
    assert data == {**before, "inputsChangedAt": when}
    assert datetime.fromisoformat(when) > datetime.fromisoformat(before["dataFreshness"])
    assert badge(client, p.user_id) == ("updating", "Updating · your portfolio changed just now")
    assert dashboard(client, other.user_id)["inputsChangedAt"] is None  # not another's flag

    # The same file again changes nothing: the flag still names the first change.
    code, out, _ = overnight("load", str(changed))
    assert code == 0 and "0 user(s) changed" in out
    assert dashboard(client, p.user_id)["inputsChangedAt"] == when

    # A miss reads the same flag from PostgreSQL, and the refill puts the marker back with
    # the entry, so the hits that follow say it too.
    sync_redis.delete(
        *(k(p.user_id, redis_prefix) for k in (recs_key, portfolio_key, version_key, changed_key))
    )
    missed = dashboard(client, p.user_id)
    assert missed == {**data, "fromCache": False}
    assert sync_redis.get(changed_key(p.user_id, redis_prefix)) == when.encode()
    assert dashboard(client, p.user_id) == data

    # Redis down: PostgreSQL alone gives the same answers.
    down = make_client(redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    assert dashboard(down, p.user_id) == {**data, "fromCache": False}
    assert dashboard(down, other.user_id)["inputsChangedAt"] is None

    # The recalculated result lands (generated after the change): not flagged any more.
    newer = planner(
        p.user_id,
        generated_at=datetime.now(UTC),
        market_date=p.market_date + timedelta(days=1),
        contribution="5000.00",
        seed=3,
    )
    with pg_engine.begin() as conn:
        persist(conn, [newer])
    cache(newer)
    fresh = dashboard(client, p.user_id)
    assert fresh["fromCache"] is True and fresh["inputsChangedAt"] is None
    assert fresh["totalInvestable"] == "5000.00"
    assert dashboard(down, p.user_id) == {**fresh, "fromCache": False}
    assert badge(client, p.user_id) == ("fresh", "Fresh · generated just now")


def test_a_new_user_with_nothing_computed_yet_sees_when_they_changed(
    client: TestClient, overnight: Overnight, tmp_path: Path, pg_engine: Engine
) -> None:
    user = uuid.uuid4()
    assert dashboard(client, user)["inputsChangedAt"] is None  # not loaded: nothing to say
    code, out, _ = overnight("load", str(load_file(tmp_path, user, "300.00")))
    assert code == 0 and "1 user(s) changed" in out
    data = dashboard(client, user)
    assert data["dataFreshness"] is None and data["recommendations"] == []
    assert data["inputsChangedAt"] == last_change(pg_engine, user)
    assert badge(client, user) == ("updating", "Updating · your portfolio changed just now")


def test_redis_down_during_the_load_warns_once_and_the_load_stands(
    client: TestClient,
    new_user: NewUser,
    cache: Cache,
    overnight: Overnight,
    tmp_path: Path,
    pg_engine: Engine,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    p = new_user(hours_ago=3, seed=4)
    cache(p)
    code, out, err = overnight(
        "load",
        str(load_file(tmp_path, p.user_id, "7000.00")),
        redis_url=f"redis://127.0.0.1:{closed_port()}/0",
    )
    assert code == 0 and "1 user(s) changed" in out
    lines = err.strip().splitlines()
    warnings = [line for line in lines if line.startswith("warning:")]
    assert len(warnings) == 1, err
    assert "the load is committed" in warnings[0] and "connection refused" in warnings[0]
    when = last_change(pg_engine, p.user_id)
    # As the warning says: the cached result does not know of the change...
    assert dashboard(client, p.user_id)["inputsChangedAt"] is None
    # ...until it is read from PostgreSQL, whose answer puts the marker back.
    sync_redis.delete(recs_key(p.user_id, redis_prefix))
    missed = dashboard(client, p.user_id)
    assert missed["fromCache"] is False and missed["inputsChangedAt"] == when
    assert dashboard(client, p.user_id) == {**missed, "fromCache": True}


@pytest.mark.parametrize(
    "planted",
    [
        b"garbage",
        b"",
        b"2026-02-30T12:00:00.000000Z",
        b"2999-01-01T00:00:00.000000Z",
        b"2026-12-01T12:00:00Z",
        b"\xff\xfe\x00{",
        b"x" * 100_000,
        None,  # a key of another type: MGET reads nothing
    ],
)
def test_a_marker_this_project_did_not_write_is_ignored(
    client: TestClient,
    new_user: NewUser,
    cache: Cache,
    sync_redis: redis.Redis,
    redis_prefix: str,
    planted: bytes | None,
) -> None:
    p = new_user(hours_ago=3, seed=5)
    cache(p)
    key = changed_key(p.user_id, redis_prefix)
    if planted is None:
        sync_redis.rpush(key, "2999-01-01T00:00:00.000000Z")
    else:
        sync_redis.set(key, planted)
    data = dashboard(client, p.user_id)
    assert data["fromCache"] is True and data["inputsChangedAt"] is None
    assert badge(client, p.user_id)[0] == "fresh"


def test_a_marker_older_than_the_result_or_on_another_user_flags_nothing(
    client: TestClient,
    new_user: NewUser,
    cache: Cache,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    p, q = new_user(hours_ago=3, seed=6), new_user(hours_ago=3, seed=7)
    cache(p, q)
    mark_changed(
        sync_redis, [p.user_id], p.generated_at - timedelta(minutes=1), prefix=redis_prefix
    )
    assert dashboard(client, p.user_id)["inputsChangedAt"] is None
    at = datetime.now(UTC) - timedelta(minutes=2)
    mark_changed(sync_redis, [q.user_id], at, prefix=redis_prefix)
    assert dashboard(client, p.user_id)["inputsChangedAt"] is None
    flagged = dashboard(client, q.user_id)
    assert flagged["inputsChangedAt"] == stamp(at)
    assert flagged["recommendations"] == json.loads(q.recs_json)["recommendations"]
    assert badge(client, q.user_id) == (
        "updating",
        "Updating · your portfolio changed 2 minutes ago",
    )
