"""A user's change reaches the cache and the fallback row the same day (issue 23 item 3):
`overnight load` records it, the recalculation job (launched by `user_changes_sensor` or
`overnight recalculate`) computes the changed users again from the stored market data,
with the amounts a nightly run of the new inputs gives."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from dagster import DagsterInstance, RunRequest, SkipReason, build_sensor_context
from sqlalchemy import func, select

from overnight_pipeline.cli import main
from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.recalculation import (
    RECALCULATION_JOB,
    SENSOR,
    run_config,
)
from overnight_pipeline.defs.resources import AppDatabase
from overnight_pipeline.recalculate import JOB_TYPE
from overnight_pipeline.seed import seed
from overnight_pipeline.settings import get_settings, load_settings
from overnight_pipeline.storage.cache import get_entry
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import (
    calculation_events_table,
    overnight_job_runs_table,
    recommendations_table,
    user_changes_table,
)
from overnight_pipeline.storage.recommendations import (
    RecommendationRow,
    recommendation_rows,
    write_recommendations,
)
from overnight_pipeline_tests.pipeline.conftest import DAY, Pipeline
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
)
from overnight_pipeline_tests.support.documents import one_class_user

CHANGING = uuid.UUID("00000000-0000-4000-8000-00000000ca01")
LEAVING = uuid.UUID("00000000-0000-4000-8000-00000000ca02")
STEADY = uuid.UUID("00000000-0000-4000-8000-00000000ca03")
ASSETS = [
    {"market": "NYSE", "symbol": f"RCLC{i}", "currency": "USD", "name": f"Recalc {i}"}
    for i in (1, 2, 3)
]


def _user(
    user_id: uuid.UUID,
    *,
    contribution: str = "1000",
    holdings: tuple[str, ...] = ("RCLC1", "RCLC2", "RCLC3"),
    active: bool = True,
) -> dict[str, Any]:
    return one_class_user(
        user_id, market="NYSE", symbols=holdings, contribution=contribution, active=active
    )


def _file(*users: dict[str, Any]) -> Any:
    return parse_load_file({"assets": ASSETS, "users": list(users)}, markets=load_markets())


BEFORE = _file(_user(CHANGING), _user(LEAVING), _user(STEADY))
AFTER = _file(
    _user(CHANGING, contribution="5000", holdings=("RCLC1", "RCLC2")),  # raised, RCLC3 sold
    _user(LEAVING, active=False),
    _user(STEADY),
)


@pytest.fixture(scope="module")
def recalc_db() -> Iterator[str]:
    url = create_pg_database("overnight_recalc")
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        seed(conn, users=20, seed=11, as_of=DAY)
        load(conn, BEFORE)
        conn.execute(user_changes_table.delete())  # the night computes the created users
    engine.dispose()
    yield url
    drop_pg_database(url)


@pytest.fixture
def night(recalc_db: str, redis_prefix: str) -> Iterator[Pipeline]:
    """NYSE's night of DAY materialised (the users' inputs as BEFORE), on its own instance."""
    settings = load_settings(database_url=recalc_db, redis_url=REDIS_URL, cache_prefix=redis_prefix)
    engine = make_engine(settings.database_url)
    client = redis.Redis.from_url(REDIS_URL)
    with engine.begin() as conn:
        load(conn, BEFORE)
        conn.execute(user_changes_table.delete())
    with DagsterInstance.ephemeral() as instance:
        pipeline = Pipeline(
            settings, engine, client, definitions_for(settings, env_vars=False), instance
        )
        assert pipeline.run("NYSE", DAY).success
        yield pipeline
    client.close()
    engine.dispose()


def _recalculate(p: Pipeline, **config: Any) -> Any:
    job = p.defs.resolve_job_def(RECALCULATION_JOB)
    return job.execute_in_process(instance=p.instance, run_config=run_config(**config))


def _row(p: Pipeline, user: uuid.UUID) -> Any:
    r = recommendations_table
    with p.engine.connect() as conn:
        return conn.execute(
            select(r).where(r.c.user_id == user, r.c.market_date == DAY)
        ).one_or_none()


def _amounts(payload: Any) -> list[tuple[str, str, str]]:
    doc = orjson.loads(payload) if isinstance(payload, (bytes, str)) else payload
    return [(r["symbol"], r["amount"], r["score"]) for r in doc["recommendations"]]


def _events(p: Pipeline, user: uuid.UUID) -> dict[uuid.UUID, list[str]]:
    e = calculation_events_table
    with p.engine.connect() as conn:
        rows = conn.execute(
            select(e.c.correlation_id, e.c.event_type).where(e.c.user_id == user).order_by(e.c.id)
        )
        found: dict[uuid.UUID, list[str]] = {}
        for cid, kind in rows:
            found.setdefault(cid, []).append(kind)
    return found


def test_a_changed_user_is_recalculated_as_a_night_of_the_new_inputs_would(
    night: Pipeline,
) -> None:
    nightly = _row(night, CHANGING)
    assert _amounts(nightly.payload)[0][0] is not None
    calculations = {u: len(_events(night, u)) for u in (CHANGING, STEADY)}
    assert get_entry(night.redis, LEAVING, prefix=night.settings.cache_prefix) is not None
    with night.engine.begin() as conn:
        report = load(conn, AFTER)
    assert report.users_changed == 2  # STEADY is unchanged: nothing recorded for it

    result = _recalculate(night)
    assert result.success

    row = _row(night, CHANGING)
    assert row.correlation_id != nightly.correlation_id and row.generated_at > nightly.generated_at
    assert row.total_investable == 5000
    assert "RCLC3" not in {s for s, _, _ in _amounts(row.payload)}
    cached = get_entry(night.redis, CHANGING, prefix=night.settings.cache_prefix)
    assert cached is not None
    assert _amounts(cached.recs_json) == _amounts(row.payload)
    # The four events of a new calculation, under the recalculation's correlation id.
    events = _events(night, CHANGING)
    assert events[row.correlation_id] == [
        "CALC_STARTED",
        "INPUTS_CAPTURED",
        "SCORES_COMPUTED",
        "CALC_COMPLETED",
    ]
    assert len(events) == calculations[CHANGING] + 1
    # The inactive user's entries are gone; the unchanged user was not computed again.
    assert get_entry(night.redis, LEAVING, prefix=night.settings.cache_prefix) is None
    assert len(_events(night, STEADY)) == calculations[STEADY]
    # Its changes are processed; the run is recorded with its own job type.
    j, c = overnight_job_runs_table, user_changes_table
    with night.engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(c.c.processed_at.is_(None))) == 0
        recorded = conn.execute(select(j).where(j.c.run_id == result.run_id)).one()
    assert (recorded.job_type, recorded.status, recorded.market) == (JOB_TYPE, "completed", "NYSE")
    assert (recorded.users_processed, recorded.market_date) == (1, DAY)

    # A full night of the new inputs gives exactly the same amounts.
    assert night.run("NYSE", DAY).success
    rerun = _row(night, CHANGING)
    assert rerun.correlation_id not in (row.correlation_id, nightly.correlation_id)
    assert _amounts(rerun.payload) == _amounts(row.payload)
    assert _amounts(rerun.payload) != _amounts(nightly.payload)

    # Nothing pending: the next recalculation computes nobody.
    again = _recalculate(night)
    assert again.success and len(_events(night, CHANGING)) == calculations[CHANGING] + 2


def test_an_older_result_written_late_never_replaces_a_newer_row(night: Pipeline) -> None:
    newer = _row(night, STEADY)
    late = RecommendationRow(
        user_id=STEADY,
        market_date=DAY,
        market="NYSE",
        correlation_id=uuid.uuid4(),
        generated_at=newer.generated_at - timedelta(seconds=1),
        base_currency="USD",
        total_investable=Decimal(1),
        criteria_version=newer.criteria_version,
        payload=b'{"recommendations": []}',
        portfolio=b"{}",
    )

    def write(row: RecommendationRow) -> None:
        with night.engine.begin() as conn:
            write_recommendations(conn, recommendation_rows(conn.dialect.name, [row]))

    write(late)
    assert _row(night, STEADY).correlation_id == newer.correlation_id
    # The reverse: a newer result replaces the row.
    write(replace(late, generated_at=newer.generated_at + timedelta(microseconds=1)))
    assert _row(night, STEADY).correlation_id == late.correlation_id


def test_the_sensor_launches_one_run_for_a_burst_and_waits_for_it(night: Pipeline) -> None:
    sensor = night.defs.resolve_sensor_def(SENSOR)
    resources = {"database": AppDatabase(url=night.settings.database_url)}

    def tick() -> Any:
        with build_sensor_context(instance=night.instance, resources=resources) as ctx:
            return sensor(ctx)

    assert isinstance(tick(), SkipReason)  # nothing pending
    calculations = len(_events(night, STEADY))
    with night.engine.begin() as conn:
        for contribution in ("2000", "3000", "4000"):  # three loads, two users each time
            load(
                conn,
                _file(
                    _user(CHANGING, contribution=contribution),
                    _user(STEADY, contribution=contribution),
                ),
            )
        last = conn.scalar(select(func.max(user_changes_table.c.id)))
    request = tick()
    assert isinstance(request, RunRequest)
    assert request.run_key == f"user-changes:{last}"
    assert request.tags["overnight/users"] == "2"
    config = request.run_config["ops"]["recalculate_changed_users"]["config"]
    assert config["up_to_change"] == last
    result = night.defs.resolve_job_def(RECALCULATION_JOB).execute_in_process(
        instance=night.instance, run_config=request.run_config
    )
    assert result.success
    assert _row(night, STEADY).total_investable == 4000  # the newest inputs, computed once
    assert len(_events(night, STEADY)) == calculations + 1
    assert isinstance(tick(), SkipReason)


def test_overnight_recalculate_through_the_command(
    night: Pipeline, monkeypatch: pytest.MonkeyPatch, tmp_path: Any, capsys: Any
) -> None:
    monkeypatch.setenv("DATABASE_URL", night.settings.database_url)
    monkeypatch.setenv("REDIS_URL", REDIS_URL)
    monkeypatch.setenv("CACHE_PREFIX", night.settings.cache_prefix)
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    get_settings.cache_clear()
    try:
        with night.engine.begin() as conn:
            load(conn, _file(_user(CHANGING, contribution="7000")))
        assert main(["recalculate", "--changed"]) == 0
        out = capsys.readouterr().out
        assert "recalculated 1 user(s), 0 failed" in out and f"NYSE|{DAY}" in out
        assert _row(night, CHANGING).total_investable == 7000
        # One user on demand, changed or not.
        assert main(["recalculate", "--user", str(STEADY)]) == 0
        assert "recalculated 1 user(s)" in capsys.readouterr().out
        assert main(["recalculate", "--user", "not-a-uuid"]) == 2
        assert "--user must be a UUID (got 'not-a-uuid')" in capsys.readouterr().err
        assert main(["recalculate", "--user", str(uuid.uuid4())]) == 2
        assert "--user: no user with id" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()


def test_a_recalculation_failed_on_redis_resumes_without_duplicates(night: Pipeline) -> None:
    from datetime import UTC, datetime

    from overnight_pipeline.recalculate import recalculate
    from overnight_pipeline_tests.test_cli import closed_port

    with night.engine.begin() as conn:
        load(conn, _file(_user(CHANGING, contribution="6000"), _user(STEADY, contribution="1500")))
    cid, at = uuid.uuid4(), datetime.now(UTC)
    down = redis.Redis.from_url(f"redis://127.0.0.1:{closed_port()}/0", socket_connect_timeout=1)
    common: dict[str, Any] = {
        "markets": load_markets(),
        "correlation_id": cid,
        "calculated_at": at,
        "prefix": night.settings.cache_prefix,
    }
    with pytest.raises(redis.ConnectionError):
        recalculate(night.engine, down, run_id="recalc-try-1", **common)
    j, c = overnight_job_runs_table, user_changes_table
    with night.engine.connect() as conn:
        failed = conn.execute(select(j).where(j.c.run_id == "recalc-try-1")).one()
        assert conn.scalar(select(func.count()).where(c.c.processed_at.is_(None))) == 2
    assert (failed.status, failed.job_type) == ("failed", JOB_TYPE)
    assert "ConnectionError" in failed.error_details["run_error"]
    assert _events(night, CHANGING)[cid] == [
        "CALC_STARTED",
        "INPUTS_CAPTURED",
        "SCORES_COMPUTED",
        "CALC_COMPLETED",
    ]

    report = recalculate(night.engine, night.redis, run_id="recalc-try-2", **common)
    assert (report.status, report.computed, report.cache_written) == ("completed", 2, 2)
    for user in (CHANGING, STEADY):
        assert len(_events(night, user)[cid]) == 4  # resumed: nothing written twice
    cached = get_entry(night.redis, CHANGING, prefix=night.settings.cache_prefix)
    assert cached is not None and Decimal(cached.total_investable) == 6000
    with night.engine.connect() as conn:
        assert conn.scalar(select(func.count()).where(c.c.processed_at.is_(None))) == 0


def test_a_failed_recalculation_is_launched_again_for_the_same_changes(night: Pipeline) -> None:
    from overnight_pipeline.defs.recalculation import pending_changes_request
    from overnight_pipeline_tests.test_cli import closed_port

    resources = {"database": AppDatabase(url=night.settings.database_url)}

    def tick(after: float) -> Any:
        with build_sensor_context(instance=night.instance, resources=resources) as ctx:
            return pending_changes_request(
                ctx, ctx.resources.database, relaunch_after_seconds=after, max_relaunches=2
            )

    broken = definitions_for(
        night.settings.model_copy(update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0"}),
        env_vars=False,
    ).resolve_job_def(RECALCULATION_JOB)
    with night.engine.begin() as conn:
        load(conn, _file(_user(STEADY, contribution="2500")))
    first = tick(0)
    assert isinstance(first, RunRequest)
    for attempt in range(1, 2 + 2):
        request = tick(0)
        assert isinstance(request, RunRequest), request
        expected = first.run_key if attempt == 1 else f"{first.run_key}:relaunch-{attempt - 1}"
        assert request.run_key == expected
        failed = broken.execute_in_process(
            instance=night.instance,
            run_config=request.run_config,
            tags=request.tags,
            raise_on_error=False,
        )
        assert not failed.success
        if attempt == 1:
            # Not at once: after the delay, doubling.
            waiting = tick(3600)
            assert isinstance(waiting, SkipReason) and "launching again" in str(
                waiting.skip_message
            )
    gave_up = tick(0)
    assert isinstance(gave_up, SkipReason) and "re-execute" in str(gave_up.skip_message)
    # A new change is a new run key: launched at once.
    with night.engine.begin() as conn:
        load(conn, _file(_user(STEADY, contribution="2600")))
    fresh = tick(3600)
    assert isinstance(fresh, RunRequest) and ":relaunch-" not in str(fresh.run_key)
