"""Fault drills (BEHAVIOUR §7), each on real PostgreSQL and Redis: Redis down during the cache
step, the rate provider down, a PostgreSQL connection dropped mid-step, and a failed step
re-executed from failure."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
import redis
from dagster import (
    DagsterEventType,
    DagsterInstance,
    Definitions,
    ExecuteInProcessResult,
    JobDefinition,
    ReexecutionOptions,
    build_run_status_sensor_context,
    execute_job,
    reconstructable,
)
from sqlalchemy import Engine, func, select, text

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.core.captured_reader import self_contained, snapshot_keys
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.calculation import SCORES_AND_RECOMMENDATIONS
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.defs.sensors import FAILED_SENSOR, SUCCEEDED_SENSOR
from overnight_pipeline.defs.shards import Shard
from overnight_pipeline.settings import Settings, load_settings
from overnight_pipeline.storage import batches
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.events import snapshots
from overnight_pipeline.storage.job_runs import job_run
from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    exchange_rates_table,
    recommendations_table,
)
from overnight_pipeline.storage.queries import newest_recommendation
from overnight_pipeline.storage.scores import asset_scores_table
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.pipeline.conftest import sensor_resources
from overnight_pipeline_tests.support.databases import REDIS_URL
from overnight_pipeline_tests.support.fake_market import closed_port as closed_http_port
from overnight_pipeline_tests.support.fake_market import running, synthetic_dataset

EVENTS = {"CALC_STARTED", "INPUTS_CAPTURED", "SCORES_COMPUTED", "CALC_COMPLETED"}
MARKETS = load_markets()


def drill_settings(pipeline_db: str, prefix: str, **overrides: object) -> Settings:
    """Short retry delays so a drill's retries take milliseconds, small user batches so a
    partition has several committed batches."""
    values: dict[str, object] = {
        "database_url": pipeline_db,
        "redis_url": REDIS_URL,
        "cache_prefix": prefix,
        "user_batch_size": 10,
        "retry_delay_seconds": 0.05,
    }
    values.update(overrides)
    return load_settings(**values)


@pytest.fixture
def engine(pipeline_db: str) -> Iterator[Engine]:
    engine = make_engine(pipeline_db)
    yield engine
    engine.dispose()


@pytest.fixture
def instance() -> Iterator[DagsterInstance]:
    with DagsterInstance.ephemeral() as instance:
        yield instance


def run(defs: Definitions, instance: DagsterInstance, market: str, day: date):
    return defs.resolve_job_def(OVERNIGHT_JOB).execute_in_process(
        instance=instance, partition_key=partition_key(market, day), raise_on_error=False
    )


def record(settings: Settings, instance: DagsterInstance, result: ExecuteInProcessResult):
    """What the job-run sensor writes for this run (its success or failure tick)."""
    defs = definitions_for(settings, env_vars=False)
    failed = not result.success
    kind = DagsterEventType.RUN_FAILURE if failed else DagsterEventType.RUN_SUCCESS
    event = next(e for e in result.all_events if e.event_type == kind)
    with build_run_status_sensor_context(
        sensor_name=FAILED_SENSOR if failed else SUCCEEDED_SENSOR,
        dagster_event=event,
        dagster_instance=instance,
        dagster_run=result.dagster_run,
        resources=sensor_resources(settings),
    ) as context:
        defs.resolve_sensor_def(FAILED_SENSOR if failed else SUCCEEDED_SENSOR)(context)
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        found = job_run(conn, result.run_id)
    engine.dispose()
    assert found is not None
    return found


def partition_users(engine: Engine, market: str, day: date) -> list[uuid.UUID]:
    with engine.connect() as conn:
        return batches.partition_users(conn, market=market, day=day, markets=MARKETS)


def events_of(engine: Engine, correlation_id: uuid.UUID) -> dict[uuid.UUID, Counter[str]]:
    e = calculation_events_table.c
    out: dict[uuid.UUID, Counter[str]] = {}
    with engine.connect() as conn:
        for user_id, kind in conn.execute(
            select(e.user_id, e.event_type).where(e.correlation_id == correlation_id)
        ):
            out.setdefault(user_id, Counter())[kind] += 1
    return out


def retries(result: ExecuteInProcessResult, step: str) -> int:
    return sum(
        1
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY and e.step_key == step
    )


def test_redis_down_during_the_cache_step_leaves_a_partial_run_served_from_postgresql(
    pipeline_db: str, redis_prefix: str, engine: Engine, instance: DagsterInstance
) -> None:
    settings = drill_settings(
        pipeline_db, redis_prefix, redis_url=f"redis://127.0.0.1:{closed_port()}/0"
    )
    day = date(2026, 11, 27)
    result = run(definitions_for(settings, env_vars=False), instance, "XETRA", day)

    assert not result.success
    assert {e.step_key for e in result.all_events if e.is_step_failure} == {"recommendation_cache"}
    assert retries(result, "recommendation_cache") == 3  # failed visibly, after its retries
    kept = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert kept == {
        "exchange_rates",
        "asset_prices",
        "asset_fundamentals",
        "asset_scores",
        "recommendations",
    }

    recorded = record(settings, instance, result)
    assert recorded["status"] == "partial"
    assert "Redis unreachable" in recorded["error_details"]["failed_steps"]["recommendation_cache"]
    assert recorded["metrics"]["cache_warmed"] is False  # so the market-date is not ready
    users = partition_users(engine, "XETRA", day)
    assert recorded["users_processed"] == len(users) and recorded["users_failed"] == 0

    # The dashboard's fallback source has every user's recommendations of this run.
    cid = correlation_id_for(f"{result.run_id}:{day}|XETRA")
    with engine.connect() as conn:
        newest = [newest_recommendation(conn, user_id=u) for u in users]
    assert all(n is not None and n.market_date == day and n.correlation_id == cid for n in newest)
    assert all(set(c) == EVENTS for c in events_of(engine, cid).values())


def test_rate_provider_down_uses_the_newest_stored_rates_and_flags_them_stale(
    pipeline_db: str, redis_prefix: str, engine: Engine, instance: DagsterInstance
) -> None:
    stored_day, day = date(2026, 11, 18), date(2026, 11, 19)
    # An earlier night stored its rates.
    healthy = drill_settings(pipeline_db, redis_prefix)
    assert run(definitions_for(healthy, env_vars=False), instance, "LSE", stored_day).success

    users = partition_users(engine, "LSE", day)
    with engine.connect() as conn:
        held = sorted(batches.partition_instruments(conn, users))
    with running(synthetic_dataset(held, ["GBP"], day)) as prices:
        settings = drill_settings(
            pipeline_db,
            redis_prefix,
            market_data="http",
            rates_url=f"http://127.0.0.1:{closed_http_port()}/v1",  # the rate service is down
            prices_url=prices.prices_url,
        )
        result = run(definitions_for(settings, env_vars=False), instance, "LSE", day)
    assert result.success

    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["exchange_rates"]["stale"].value is True
    assert meta["exchange_rates"]["source"].value == "stored"
    assert meta["asset_scores"]["rates_stale"].value is True
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert not checks["rates_fresh"].passed
    assert checks["rates_fresh"].severity.value == "WARN"

    cid = correlation_id_for(f"{result.run_id}:{day}|LSE")
    e = calculation_events_table.c
    with engine.connect() as conn:
        captured = (
            conn.execute(
                select(e.payload).where(e.correlation_id == cid, e.event_type == "INPUTS_CAPTURED")
            )
            .scalars()
            .all()
        )
        # Each user's document with the run's market snapshot (the rates) put back in.
        shared = snapshots(conn, {k for doc in captured for k in snapshot_keys(doc)})
        captured = [self_contained(doc, shared) for doc in captured]
        x = exchange_rates_table.c
        stored = {
            q: str(rate.normalize())
            for q, rate in conn.execute(
                select(x.quote, x.rate).where(x.rate_date == stored_day, x.base == "USD")
            )
        }
        written_for_day = conn.scalar(select(func.count()).where(x.rate_date == day))
    assert len(captured) == len(users)
    assert all(doc["rates"]["stale"] is True for doc in captured)
    # The rates used are the earlier night's, one day old; nothing stale is written back.
    assert meta["exchange_rates"]["stale_age_hours"].value == 24.0
    for doc in captured:
        assert doc["rates"]["usdTo"] and all(
            stored[c] == str(Decimal(v).normalize()) for c, v in doc["rates"]["usdTo"].items()
        )
    assert written_for_day == 0

    recorded = record(settings, instance, result)
    assert recorded["status"] == "completed" and recorded["metrics"]["rates_stale"] is True
    assert recorded["metrics"]["checks"]["exchange_rates:rates_fresh"]["passed"] is False


@pytest.fixture
def drop_connection_on_second_batch(engine: Engine) -> Iterator[None]:
    """The second batch's write to user_scores kills its own PostgreSQL connection (a
    server-side terminate: the client sees the connection drop mid-transaction)."""
    with engine.begin() as conn:
        conn.execute(
            text("""
            CREATE SEQUENCE drill_batches;
            CREATE FUNCTION drill_drop_connection() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('drill_batches') = 2 THEN
                PERFORM pg_terminate_backend(pg_backend_pid());
              END IF;
              RETURN NULL;
            END $$;
            CREATE TRIGGER drill_drop_connection AFTER INSERT ON user_scores
              FOR EACH STATEMENT EXECUTE FUNCTION drill_drop_connection();
        """)
        )
    yield
    with engine.begin() as conn:
        conn.execute(
            text("""
            DROP TRIGGER drill_drop_connection ON user_scores;
            DROP FUNCTION drill_drop_connection();
            DROP SEQUENCE drill_batches;
        """)
        )


def test_a_dropped_postgresql_connection_mid_step_is_retried_and_completes(
    pipeline_db: str,
    redis_prefix: str,
    engine: Engine,
    instance: DagsterInstance,
    drop_connection_on_second_batch: None,
) -> None:
    settings = drill_settings(pipeline_db, redis_prefix)
    day = date(2026, 11, 24)
    users = partition_users(engine, "B3", day)
    assert len(users) > 2 * settings.user_batch_size  # the drop happens mid-step
    result = run(definitions_for(settings, env_vars=False), instance, "B3", day)

    assert result.success
    step = Shard(f"{day}|B3", 0, 1).step_key
    assert retries(result, step) == 1
    failure = next(
        e for e in result.all_events if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
    )
    assert "terminating connection" in str(failure.event_specific_data)
    scores_meta = next(
        e.step_output_data.metadata
        for e in result.all_events
        if e.event_type == DagsterEventType.STEP_OUTPUT and e.step_key == step
    )
    # The retry skipped the users of the batches that committed (two writes run at once, so
    # the failed write is not necessarily the second batch's) and redid the failed one.
    resumed = scores_meta["users_resumed"].value
    assert 0 < resumed < len(users)
    assert scores_meta["users_succeeded"].value == len(users) - resumed

    cid = correlation_id_for(f"{result.run_id}:{day}|B3")
    events = events_of(engine, cid)
    assert set(events) == set(users)
    assert all(c == Counter(EVENTS) for c in events.values())  # each once
    # Both attempts wrote into the partition of the run's creation time.
    assert calculation_times(engine, cid) == {created_at(instance, result.run_id)}
    s = asset_scores_table.c
    with engine.connect() as conn:
        per_user = Counter(
            conn.scalars(
                select(s.user_id).where(
                    s.market_date == day, s.correlation_id == cid, s.user_id.in_(users)
                )
            )
        )
    assert set(per_user) == set(users)
    # The job-run row counts the whole calculation, not just the attempt that succeeded.
    recorded = record(settings, instance, result)
    assert recorded["status"] == "completed" and recorded["users_processed"] == len(users)
    assert recorded["metrics"]["assets_scored"] == sum(per_user.values())
    assert recorded["metrics"]["assets_scored"] > scores_meta["assets_scored"].value
    assert recorded["metrics"]["steps"][step]["attempts"] == 2


def calculation_times(engine: Engine, cid: uuid.UUID) -> set[datetime]:
    """The `calculated_at` of the calculation's events and asset-X rows."""
    e, a = calculation_events_table.c, calculation_assets_table.c
    with engine.connect() as conn:
        return set(conn.scalars(select(e.calculated_at).where(e.correlation_id == cid))) | set(
            conn.scalars(select(a.calculated_at).where(a.correlation_id == cid))
        )


def created_at(instance: DagsterInstance, run_id: str) -> datetime:
    record = instance.get_run_record_by_id(run_id)
    assert record is not None
    stamp = record.create_timestamp
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)


# Re-execution from failure needs a job Dagster can rebuild by itself (`reconstructable`):
# it reads its settings from the environment, as the daemon's runs do.


def reexecutable_overnight_job() -> JobDefinition:
    return definitions_for(load_settings(), env_vars=False).resolve_job_def(OVERNIGHT_JOB)


@pytest.fixture
def fail_recommendations_for(engine: Engine) -> Iterator[list[uuid.UUID]]:
    """A trigger that makes every write of the listed users' recommendations fail."""
    poisoned: list[uuid.UUID] = []
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE drill_poisoned (user_id uuid PRIMARY KEY)"))
        conn.execute(
            text("""
            CREATE FUNCTION drill_fail_recommendation() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF EXISTS (SELECT 1 FROM drill_poisoned WHERE user_id = NEW.user_id) THEN
                RAISE EXCEPTION 'injected failure for user %', NEW.user_id;
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER drill_fail_recommendation BEFORE INSERT ON recommendations
              FOR EACH ROW EXECUTE FUNCTION drill_fail_recommendation();
        """)
        )
    yield poisoned
    with engine.begin() as conn:
        conn.execute(
            text("""
            DROP TRIGGER IF EXISTS drill_fail_recommendation ON recommendations;
            DROP FUNCTION IF EXISTS drill_fail_recommendation();
            DROP TABLE IF EXISTS drill_poisoned;
        """)
        )


def test_a_failed_step_re_executed_from_failure_completes_every_user_once(
    pipeline_db: str,
    redis_prefix: str,
    engine: Engine,
    fail_recommendations_for: list[uuid.UUID],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    settings = drill_settings(pipeline_db, redis_prefix)
    for name, value in (
        ("DATABASE_URL", pipeline_db),
        ("REDIS_URL", REDIS_URL),
        ("CACHE_PREFIX", redis_prefix),
        ("USER_BATCH_SIZE", "10"),
        ("RETRY_DELAY_SECONDS", "0.05"),
    ):
        monkeypatch.setenv(name, value)
    market, day = "TSE", date(2026, 11, 25)
    key = f"{day}|{market}"
    shard = Shard(key, 0, 1).step_key
    users = partition_users(engine, market, day)
    poisoned = users[-1]  # in the last batch: the earlier batches commit first
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO drill_poisoned VALUES (:u)"), {"u": poisoned})

    job = reconstructable(reexecutable_overnight_job)
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        tags = {
            "dagster/partition": key,
            "dagster/partition/date": day.isoformat(),
            "dagster/partition/market": market,
        }
        with execute_job(job, instance, tags=tags, raise_on_error=False) as first:
            assert not first.success
            assert {e.step_key for e in first.all_events if e.is_step_failure} == {shard}
            first_run = first.dagster_run
        cid = correlation_id_for(f"{first_run.run_id}:{key}")
        before = events_of(engine, cid)
        assert sum(c["CALC_COMPLETED"] for c in before.values()) == 2 * settings.user_batch_size

        # The fault is fixed; the operator re-executes from failure (UI or this API).
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM drill_poisoned"))
        parent = instance.get_run_by_id(first_run.run_id)
        assert parent is not None
        with execute_job(
            job,
            instance,
            tags=parent.tags,
            raise_on_error=False,
            reexecution_options=ReexecutionOptions.from_failure(parent.run_id, instance),
        ) as second:
            assert second.success
            second_run = second.dagster_run
            executed = {
                e.step_key for e in second.all_events if e.event_type == DagsterEventType.STEP_START
            }
        assert executed == {
            shard,
            f"{SCORES_AND_RECOMMENDATIONS}.collect_shards",
            "recommendation_cache",
        }
        assert second_run.root_run_id == first_run.run_id
        assert second_run.tags["dagster/partition"] == key

        # One calculation: the same correlation id, every user's four events exactly once,
        # all stamped (and partitioned) with the root run's creation time.
        events = events_of(engine, cid)
        assert set(events) == set(users)
        assert all(c == Counter(EVENTS) for c in events.values())
        assert calculation_times(engine, cid) == {created_at(instance, first_run.run_id)}
        e, r = calculation_events_table.c, recommendations_table.c
        with engine.connect() as conn:
            other = conn.scalar(
                select(func.count()).where(
                    e.user_id.in_(users),
                    e.correlation_id != cid,
                    e.payload["marketDate"].as_string() == day.isoformat(),
                )
            )
            rows = Counter(
                conn.scalars(select(r.user_id).where(r.market_date == day, r.user_id.in_(users)))
            )
            owners = set(
                conn.scalars(
                    select(r.correlation_id).where(r.market_date == day, r.user_id.in_(users))
                )
            )
        assert other == 0
        assert set(rows) == set(users) and set(rows.values()) == {1}
        assert owners == {cid}
        client = redis.Redis.from_url(REDIS_URL)
        cached = orjson.loads(client.get(f"{redis_prefix}recs:{poisoned}") or b"null")
        client.close()
        assert cached and cached["userId"] == str(poisoned)

        # The job-run rows: the first run failed, its re-execution completed the partition.
        first_row = record_run(settings, instance, first_run.run_id, FAILED_SENSOR)
        second_row = record_run(settings, instance, second_run.run_id, SUCCEEDED_SENSOR)
    assert first_row["status"] == "failed"
    assert "injected failure" in first_row["error_details"]["failed_steps"][shard]
    assert second_row["status"] == "completed"
    assert second_row["correlation_id"] == first_row["correlation_id"] == cid
    assert second_row["users_processed"] == len(users) and second_row["users_failed"] == 0
    assert second_row["metrics"]["root_run_id"] == first_run.run_id
    # Steps the re-execution did not repeat still count: their timings come from the parent.
    assert second_row["metrics"]["fetch_rates_ms"] > 0
    assert second_row["metrics"]["recommendations_generated"] > 0


def record_run(settings: Settings, instance: DagsterInstance, run_id: str, sensor_name: str):
    run = instance.get_run_by_id(run_id)
    assert run is not None
    kind = (
        DagsterEventType.RUN_FAILURE
        if sensor_name == FAILED_SENSOR
        else DagsterEventType.RUN_SUCCESS
    )
    (entry,) = instance.all_logs(run_id, of_type=kind)
    defs = definitions_for(settings, env_vars=False)
    with build_run_status_sensor_context(
        sensor_name=sensor_name,
        dagster_event=entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources=sensor_resources(settings),
    ) as context:
        defs.resolve_sensor_def(sensor_name)(context)
    engine = make_engine(settings.database_url)
    with engine.connect() as conn:
        found = job_run(conn, run_id)
    engine.dispose()
    assert found is not None
    return found
