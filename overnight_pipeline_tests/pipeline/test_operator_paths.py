"""What an operator does in the Dagster UI, sent as the UI sends it: GraphQL to a real
`dagster dev` (webserver, daemon, code server) on a PostgreSQL instance with the
repository's dagster.yaml (SPEC §7, §9). Job backfills from the job's page, asset backfills
from the asset graph, a run worker killed with SIGKILL and re-executed from the shell."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import redis
from dagster import AssetKey, DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter
from sqlalchemy import Engine, func, select
from starlette.testclient import TestClient

from dashboard_api.app import create_app
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.defs.monitor import run_worker
from overnight_pipeline.seed import seed
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import (
    calculation_events_table,
    overnight_job_runs_table,
    recommendations_table,
)
from overnight_pipeline.storage.overnight import correlation_id_for, partition_users
from overnight_pipeline_tests.api.conftest import SECRET, bearer, token_for
from overnight_pipeline_tests.conftest import create_pg_database, drop_pg_database
from overnight_pipeline_tests.pipeline.conftest import REDIS_URL
from overnight_pipeline_tests.pipeline.dagster_dev import (
    ASSETS,
    BIN,
    REPO,
    UI_TAGS,
    DagsterDev,
    asset_selection,
    make_dagster_home,
    repository_selector,
    start_dagster_dev,
    wait_for,
)

pytestmark = pytest.mark.slow
MARKETS = load_markets()
SEED_DAY = date(2026, 11, 20)
SENSOR_SECONDS = 3


@pytest.fixture(scope="module")
def app_db() -> Iterator[str]:
    url = create_pg_database("overnight_ops")
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        seed(conn, users=600, seed=5, as_of=SEED_DAY)
    engine.dispose()
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="module")
def engine(app_db: str) -> Iterator[Engine]:
    engine = make_engine(app_db)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    prefix = f"test-ops-{uuid.uuid4().hex[:10]}:"
    assert not list(client.scan_iter(f"{prefix}*", count=1000)), "namespace not empty"
    yield prefix
    for key in client.scan_iter(f"{prefix}*", count=1000):
        client.delete(key)
    client.close()


@pytest.fixture(scope="module")
def dev(app_db: str, prefix: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagsterDev]:
    home, home_db = make_dagster_home(tmp_path_factory.mktemp("dagster-home"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update({
        "DATABASE_URL": app_db, "REDIS_URL": REDIS_URL, "CACHE_PREFIX": prefix,
        "USER_BATCH_SIZE": "10", "RETRY_DELAY_SECONDS": "0.2",
        "SENSOR_INTERVAL_SECONDS": str(SENSOR_SECONDS), "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    log = tmp_path_factory.mktemp("dagster-dev") / "dagster-dev.log"
    try:
        yield from start_dagster_dev(home, env, log)
    finally:
        drop_pg_database(home_db)


@pytest.fixture(scope="module")
def instance(dev: DagsterDev) -> Iterator[DagsterInstance]:
    os.environ.setdefault("DAGSTER_PG_URL", dev.env["DAGSTER_PG_URL"])
    with DagsterInstance.from_config(str(dev.home)) as instance:
        yield instance


def runs_of_backfill(instance: DagsterInstance, backfill_id: str) -> list[Any]:
    return list(instance.get_run_records(RunsFilter(tags={"dagster/backfill": backfill_id})))


def wait_finished(dev: DagsterDev, instance: DagsterInstance, backfill_id: str, runs: int,
                  timeout: float = 300) -> list[Any]:  # fmt: skip
    def done() -> list[Any] | None:
        records = runs_of_backfill(instance, backfill_id)
        finished = [r for r in records if r.dagster_run.is_finished]
        status = dev.backfill_status(backfill_id)
        if len(records) == runs and len(finished) == runs and status != "REQUESTED":
            return records
        return None

    return wait_for(f"backfill {backfill_id}: {runs} finished runs", done, timeout, dev.log)


def materialised_partitions(instance: DagsterInstance, run_id: str) -> dict[str, set[str]]:
    """Asset name → the partitions the run materialised."""
    found: dict[str, set[str]] = {}
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        mat = entry.dagster_event.step_materialization_data.materialization
        found.setdefault(mat.asset_key.to_user_string(), set()).add(str(mat.partition))
    return found


def assert_one_run_per_market_at_a_time(records: list[Any]) -> None:
    spans = [(r.start_time, r.end_time, r.dagster_run.tags.get("dagster/partition/market"))
             for r in records if r.start_time is not None]  # fmt: skip
    for start, end, market in spans:
        assert market is not None
        overlapping = [m for s, e, m in spans if s < end and e > start]  # itself included
        assert len(overlapping) <= 2 and overlapping.count(market) == 1, spans


def job_rows(engine: Engine, run_ids: set[str]) -> dict[str, Any]:
    j = overnight_job_runs_table.c
    with engine.connect() as conn:
        rows = conn.execute(select(overnight_job_runs_table).where(j.run_id.in_(run_ids))).all()
    return {r.run_id: r for r in rows}


def api_jobs(app_db: str, market: str) -> list[dict[str, Any]]:
    settings = load_settings(database_url=app_db, redis_url=REDIS_URL, dashboard_secret=SECRET)
    with TestClient(create_app(settings)) as client:
        response = client.get(f"/api/jobs?market={market}&limit=100",
                              headers=bearer(token_for(uuid.uuid4(), admin=True)))  # fmt: skip
    assert response.status_code == 200, response.text
    return list(response.json()["data"])


def events_of(engine: Engine, cids: list[uuid.UUID]) -> Counter[tuple[str, str]]:
    e = calculation_events_table.c
    with engine.connect() as conn:
        rows = conn.execute(select(e.user_id, e.event_type).where(e.correlation_id.in_(cids)))
        return Counter((str(u), t) for u, t in rows)


def test_a_job_backfill_from_the_jobs_page_builds_exactly_the_requested_partitions(
    dev: DagsterDev, instance: DagsterInstance, engine: Engine, app_db: str
) -> None:
    # Jobs → overnight_job → Materialize → B3 and TSE × two dates → Launch backfill: the
    # mutation LaunchAssetChoosePartitionsDialog sends for a job target.
    keys = [f"{d}|{m}" for d in ("2026-11-16", "2026-11-17") for m in ("B3", "TSE")]
    backfill_id = dev.launch_backfill({
        "selector": {"partitionSetName": "overnight_job_partition_set",
                     "repositorySelector": repository_selector()},
        "assetSelection": asset_selection(), "partitionNames": keys, "fromFailure": False,
        "tags": UI_TAGS,
    })  # fmt: skip
    records = wait_finished(dev, instance, backfill_id, runs=4)
    assert dev.backfill_status(backfill_id) == "COMPLETED_SUCCESS"
    by_key = {r.dagster_run.tags["dagster/partition"]: r for r in records}
    assert sorted(by_key) == sorted(keys)
    for key, record in by_key.items():
        run = record.dagster_run
        assert run.status == DagsterRunStatus.SUCCESS
        market, day = key.split("|")[1], key.split("|")[0]
        assert (run.tags["dagster/partition/market"], run.tags["dagster/partition/date"]) == (
            market, day)  # fmt: skip
        # Each run built its own partition of all six assets, and nothing else.
        assert materialised_partitions(instance, run.run_id) == {a: {key} for a in ASSETS}
    for asset in ASSETS:
        assert set(keys) <= set(instance.get_materialized_partitions(AssetKey(asset)))
    assert_one_run_per_market_at_a_time(records)

    # Each partition's users got their four events under that run's calculation.
    with engine.connect() as conn:
        for key, record in by_key.items():
            market, day = key.split("|")[1], date.fromisoformat(key.split("|")[0])
            users = partition_users(conn, market=market, day=day, markets=MARKETS)
            cid = correlation_id_for(f"{record.dagster_run.run_id}:{key}")
            counts = events_of(engine, [cid])
            assert users and len(counts) == 4 * len(users), key

    run_ids = {r.dagster_run.run_id for r in records}
    rows = wait_for("four finished job-run rows", lambda: (
        found if len(found := job_rows(engine, run_ids)) == 4
        and all(r.status != "started" for r in found.values()) else None), 60, dev.log)  # fmt: skip
    for run_id, row in rows.items():
        key = instance.get_run_by_id(run_id).tags["dagster/partition"]
        assert row.status == "completed" and row.users_processed > 0, key
        assert f"{row.market_date}|{row.market}" == key
        assert row.metrics["partitions"] == [key]


def test_partition_tags_added_at_a_backfills_launch_are_refused_before_any_write(
    dev: DagsterDev, instance: DagsterInstance, engine: Engine
) -> None:
    # The launchpad's selected partition copied into the backfill's tags: Dagster puts it
    # on every run (it overrides each run's own partition). Every run must refuse, loudly.
    keys = ["2026-11-18|B3", "2026-11-18|TSE"]
    e = calculation_events_table.c
    with engine.connect() as conn:
        events_before = conn.scalar(select(func.count()).select_from(calculation_events_table))
    backfill_id = dev.launch_backfill({
        "selector": {"partitionSetName": "overnight_job_partition_set",
                     "repositorySelector": repository_selector()},
        "assetSelection": asset_selection(), "partitionNames": keys, "fromFailure": False,
        "tags": [*UI_TAGS, {"key": "dagster/partition", "value": keys[0]},
                 {"key": "dagster/partition/date", "value": "2026-11-18"},
                 {"key": "dagster/partition/market", "value": "B3"}],
    })  # fmt: skip
    records = wait_finished(dev, instance, backfill_id, runs=2)
    assert {r.dagster_run.status for r in records} == {DagsterRunStatus.FAILURE}
    assert dev.backfill_status(backfill_id) != "COMPLETED_SUCCESS"
    for record in records:
        assert materialised_partitions(instance, record.dagster_run.run_id) == {}
        failures = [entry.dagster_event for entry in instance.all_logs(
            record.dagster_run.run_id, of_type=DagsterEventType.STEP_FAILURE)]  # fmt: skip
        assert [f.step_key for f in failures] == ["exchange_rates"]
        text = failures[0].step_failure_data.user_failure_data.description
        assert "launched with partition tags" in text and "dagster/partition/market" in text
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(calculation_events_table)) == (
            events_before)  # fmt: skip
        assert not conn.scalar(select(func.count()).where(e.created_at.is_(None)))


def test_an_asset_backfill_from_the_asset_graph_is_recorded_per_partition(
    dev: DagsterDev, instance: DagsterInstance, engine: Engine, app_db: str
) -> None:
    # Assets → select the six → Materialize → two dates of XETRA → Launch backfill: an asset
    # backfill, whose runs are `__ASSET_JOB` runs, not `overnight_job` runs.
    keys = ["2026-11-19|XETRA", "2026-11-20|XETRA"]
    backfill_id = dev.launch_backfill({
        "assetSelection": asset_selection(), "partitionNames": keys, "fromFailure": False,
        "tags": UI_TAGS,
    })  # fmt: skip
    records = wait_finished(dev, instance, backfill_id, runs=2)
    assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}
    by_key = {r.dagster_run.tags["dagster/partition"]: r for r in records}
    assert sorted(by_key) == keys
    for key, record in by_key.items():
        assert materialised_partitions(instance, record.dagster_run.run_id) == {
            a: {key} for a in ASSETS}  # fmt: skip
    assert_one_run_per_market_at_a_time(records)

    run_ids = {r.dagster_run.run_id for r in records}
    rows = wait_for("two finished job-run rows", lambda: (
        found if len(found := job_rows(engine, run_ids)) == 2
        and all(r.status != "started" for r in found.values()) else None), 60, dev.log)  # fmt: skip
    assert sorted(f"{r.market_date}|{r.market}" for r in rows.values()) == keys
    assert {r.status for r in rows.values()} == {"completed"}
    listed = {j["runId"]: j for j in api_jobs(app_db, "XETRA")}
    for run_id in run_ids:
        assert listed[run_id]["status"] == "completed"
        assert f"{listed[run_id]['marketDate']}|{listed[run_id]['market']}" in keys
