"""Readiness per market in Dagster: the `market_readiness` sensor records each market's
`ready_before_open_<MARKET>` check on `recommendation_cache` at and after its open, and
alerts a missed deadline once; the job-run sensors alert failed and partial runs
(`defs/readiness.py`, `defs/sensors.py`, `overnight_pipeline.alerts`)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from dagster import (
    AssetCheckKey,
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    SensorResult,
    build_sensor_context,
)
from sqlalchemy import Engine, delete, update

from overnight_pipeline.alerts import Webhook
from overnight_pipeline.core.markets import DEFAULT_MARKETS
from overnight_pipeline.core.readiness import STATES
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.readiness import check_name, judge_markets
from overnight_pipeline.defs.resources import AppDatabase
from overnight_pipeline.defs.sensors import CANCELED_SENSOR, SUCCEEDED_SENSOR
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage import alerts as alert_store
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import alerts_table, overnight_job_runs_table
from overnight_pipeline_tests.pipeline.conftest import DAY, Pipeline
from overnight_pipeline_tests.receiver import down_url, webhook_receiver
from overnight_pipeline_tests.support.databases import migrated_pg_database

MONDAY = date(2026, 12, 7)
MARKETS = list(DEFAULT_MARKETS)
CACHE = AssetKey("recommendation_cache")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.fixture(scope="module")
def readiness_db() -> Iterator[str]:
    yield from migrated_pg_database("overnight_readiness")


@pytest.fixture
def instance(tmp_path: Path) -> Iterator[DagsterInstance]:
    with DagsterInstance.local_temp(tempdir=str(tmp_path)) as instance:
        yield instance


@pytest.fixture
def engine(readiness_db: str) -> Iterator[Engine]:
    engine = make_engine(readiness_db)
    yield engine
    with engine.begin() as conn:
        conn.execute(delete(alerts_table))
        conn.execute(delete(overnight_job_runs_table))
    engine.dispose()


def finished(
    engine: Engine,
    market: str,
    status: str,
    start: str,
    end: str | None,
    day: date = MONDAY,
    cache: bool = True,
) -> str:
    run_id = f"{market.lower()}-{uuid.uuid4().hex[:8]}"
    run = job_runs.JobRun(
        run_id=run_id,
        correlation_id=uuid.uuid4(),
        started_at=at(start),
        completed_at=at(end) if end else None,
        status=status,
        market=market,
        market_date=day,
        users_processed=40,
        users_failed=2 if status == "partial" else 0,
        metrics={"cache_warmed": cache},
    )
    with engine.begin() as conn:
        if status == "started":
            job_runs.record_started(conn, run)
        else:
            job_runs.record_finished(conn, run)
    return run_id


def tick(
    url: str, instance: DagsterInstance, now: datetime, cursor: str | None, hook: str | None
) -> SensorResult:
    """One evaluation at `now`, its check evaluations stored as the daemon stores them."""
    webhook = Webhook(hook, backoff=0.01, pause=0) if hook else None
    with build_sensor_context(
        instance=instance, cursor=cursor, resources={"database": AppDatabase(url=url)}
    ) as context:
        database = context.resources.database
        result = judge_markets(context, database, webhook, markets=MARKETS, now=now)
    assert isinstance(result, SensorResult)
    for event in result.asset_events:
        instance.report_runless_asset_event(event)
    return result


def latest(instance: DagsterInstance, market: str) -> Any:
    key = AssetCheckKey(CACHE, check_name(market))
    records = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])
    if key not in records:
        return None
    entry = records[key].event
    return entry.dagster_event.event_specific_data if entry and entry.dagster_event else None


def test_each_market_is_judged_at_its_open_in_the_ui_and_a_miss_alerted_once(
    readiness_db: str, engine: Engine, instance: DagsterInstance
) -> None:
    nyse = finished(engine, "NYSE", "completed", "2026-12-07T12:00", "2026-12-07T12:40")
    finished(engine, "XETRA", "completed", "2026-12-07T07:30", "2026-12-07T08:20")  # late
    finished(engine, "LSE", "partial", "2026-12-07T06:00", "2026-12-07T06:30", cache=False)
    finished(engine, "TSE", "completed", "2026-12-06T22:00", "2026-12-06T22:30")
    nasdaq = finished(engine, "NASDAQ", "started", "2026-12-07T14:00", None)
    # B3 (opens 10:00 BRT = 13:00 UTC): never ran.
    with webhook_receiver() as receiver:
        # 10:00 UTC: XETRA, LSE (08:00 UTC) and TSE (00:00 UTC) have opened; NYSE has not.
        early = tick(readiness_db, instance, at("2026-12-07T10:00"), None, receiver.url)
        assert {e.check_name for e in early.asset_events} == {
            check_name(m) for m in ("XETRA", "LSE", "TSE")
        }
        now = at("2026-12-07T15:00")
        first = tick(readiness_db, instance, now, early.cursor, receiver.url)
        assert {e.check_name for e in first.asset_events} == {
            check_name(m) for m in ("NYSE", "NASDAQ", "B3")
        }
        # Nothing changed two minutes later: no evaluation, no alert.
        again = tick(readiness_db, instance, now + timedelta(minutes=2), first.cursor, receiver.url)
        assert again.asset_events == [] and again.skip_reason is not None
        # A daemon restart that lost the cursor re-records the states, never the alerts.
        lost = tick(readiness_db, instance, now + timedelta(minutes=4), None, receiver.url)
        # (Not TSE's: at 15:04 UTC it is Tuesday in Tokyo, before Tuesday's open.)
        assert len(lost.asset_events) == 5
        alerted = receiver.kinds()

        # NASDAQ's run finishes after its open: its check changes to late, nothing is resent.
        with engine.begin() as conn:
            conn.execute(
                update(overnight_job_runs_table)
                .where(overnight_job_runs_table.c.run_id == nasdaq)
                .values(status="completed", completed_at=at("2026-12-07T15:05"))
            )
        later = tick(readiness_db, instance, now + timedelta(minutes=6), first.cursor, receiver.url)
        assert [e.check_name for e in later.asset_events] == [check_name("NASDAQ")]
        assert receiver.kinds() == alerted

    assert alerted == [
        ("deadline_missed", m, "2026-12-07") for m in ("B3", "LSE", "NASDAQ", "XETRA")
    ]
    b3 = next(r for r in receiver.received if r["market"] == "B3")
    assert (b3["state"], b3["detail"], b3["deadline_utc"]) == (
        "missing",
        "no run started",
        "2026-12-07T13:00:00+00:00",
    )
    lse = next(r for r in receiver.received if r["market"] == "LSE")
    assert (lse["state"], lse["detail"]) == ("failed", "finished, but the cache was not written")

    ready = latest(instance, "NYSE")
    assert ready.passed and ready.asset_key == CACHE
    meta = {k: v.value for k, v in ready.metadata.items()}
    assert meta["market"] == "NYSE" and meta["session"] == "2026-12-07"
    assert meta["state"] == "ready" and meta["partition"] == "2026-12-07|NYSE"
    assert meta["deadline_local"] == "2026-12-07 09:30 EST"
    assert meta["deadline_utc"] == at("2026-12-07T14:30").timestamp()
    assert meta["finished_at"] == at("2026-12-07T12:40").timestamp()
    assert meta["margin"] == "1 h 50 min before the open" and meta["margin_minutes"] == 110.0
    assert meta["run_id"] == nyse and meta["users_ok"] == 40
    assert ready.description.startswith("2026-12-07|NYSE: ready; finished 2026-12-07 12:40 UTC")
    late = latest(instance, "NASDAQ")
    assert not late.passed and late.severity.value == "ERROR"
    assert late.metadata["state"].value == "late"
    assert late.metadata["margin"].value == "35 min after the open"
    assert not latest(instance, "B3").passed
    assert latest(instance, "TSE").passed  # 22:30 UTC on Sunday, before Tokyo's Monday open


def test_a_receiver_that_is_down_is_retried_by_a_later_tick(
    readiness_db: str, engine: Engine, instance: DagsterInstance
) -> None:
    hook = down_url()
    port = int(hook.rsplit(":", 1)[1].split("/")[0])
    now = at("2026-12-07T15:00")
    # Every market that has opened missed it (TSE's next open is Tuesday's): 5 alerts.
    result = tick(readiness_db, instance, now, None, hook)
    assert len(result.asset_events) == 5
    with engine.connect() as conn:
        kept = alert_store.alerts_of(conn)
    assert len(kept) == 5 and {a["status"] for a in kept} == {"pending", "failed"}
    with webhook_receiver(port=port) as receiver:  # the receiver is back on the same URL
        tick(readiness_db, instance, now + timedelta(minutes=2), result.cursor, hook)
        tick(readiness_db, instance, now + timedelta(minutes=4), result.cursor, hook)
    assert len(receiver.received) == 5 and len(set(receiver.kinds())) == 5


def test_the_checks_are_defined_per_market_and_left_out_of_the_overnight_job() -> None:
    defs = definitions_for(load_settings(), env_vars=False)
    graph = defs.resolve_asset_graph()
    keys = {k for k in graph.asset_check_keys if k.asset_key == CACHE}
    assert keys == {AssetCheckKey(CACHE, check_name(m.code)) for m in MARKETS}
    job = defs.resolve_job_def(OVERNIGHT_JOB)
    assert not {k for k in job.asset_layer.asset_graph.asset_check_keys if k.asset_key == CACHE}
    assert defs.resolve_sensor_def("market_readiness").minimum_interval_seconds == 120


def test_executing_the_checks_from_the_ui_judges_the_markets_now(
    readiness_db: str, instance: DagsterInstance
) -> None:
    defs = definitions_for(load_settings(database_url=readiness_db), env_vars=False)
    selected = {AssetCheckKey(CACHE, check_name(m)) for m in ("NYSE", "TSE")}
    job = defs.resolve_implicit_global_asset_job_def().get_subset(
        asset_check_selection=selected, asset_selection=set()
    )
    result = job.execute_in_process(instance=instance)
    assert result.success
    judged = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert set(judged) == {k.name for k in selected}
    assert all(e.metadata["state"].value in STATES for e in judged.values())


def test_run_alerts_are_raised_where_the_job_run_row_is_finished(
    pipeline: Pipeline, tmp_path: Any
) -> None:
    """A failed run and a partial one above the limit: one alert each, however many times
    their ticks are evaluated; a receiver that is down changes no job-run row."""
    from overnight_pipeline_tests.pipeline.test_sensors import invoke, row, run_event

    def canceled(market: str) -> tuple[Any, Any]:
        job = pipeline.defs.resolve_job_def(OVERNIGHT_JOB)
        run = pipeline.instance.create_run_for_job(
            job,
            tags={
                "dagster/partition": f"{DAY}|{market}",
                "dagster/partition/market": market,
                "dagster/partition/date": DAY.isoformat(),
            },
        )
        pipeline.instance.report_run_canceled(run)
        event = pipeline.instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_CANCELED)[0]
        return pipeline.instance.get_run_by_id(run.run_id), event.dagster_event

    def with_hook(url: str, ratio: float = 0.05) -> Pipeline:
        settings = pipeline.settings.model_copy(
            update={"alert_webhook_url": url, "max_failed_user_ratio": ratio}
        )
        defs = definitions_for(settings, env_vars=False)
        return Pipeline(settings, pipeline.engine, pipeline.redis, defs, pipeline.instance)

    def clear_alerts() -> None:
        with pipeline.engine.begin() as conn:
            conn.execute(delete(alerts_table))

    clear_alerts()
    try:
        # A receiver that is down: the row is what it is without alerts, the tick is fine.
        quiet_run, quiet_event = canceled("LSE")
        invoke(pipeline, CANCELED_SENSOR, quiet_run, quiet_event)
        down_run, down_event = canceled("B3")
        invoke(with_hook(down_url()), CANCELED_SENSOR, down_run, down_event)
        down_row, quiet_row = row(pipeline, down_run.run_id), row(pipeline, quiet_run.run_id)
        assert down_row["status"] == quiet_row["status"] == "failed"
        assert down_row["error_details"] == quiet_row["error_details"]
        with pipeline.engine.connect() as conn:
            [stored] = alert_store.alerts_of(conn, market="B3")
        assert (stored["kind"], stored["status"]) == ("run_failed", "failed")
        clear_alerts()

        with webhook_receiver() as receiver:
            hooked = with_hook(receiver.url, ratio=0.0)  # any failed user is too many
            run, event = canceled("XETRA")
            for _ in range(2):
                invoke(hooked, CANCELED_SENSOR, run, event)
            result = hooked.run("NYSE", DAY - timedelta(days=7), raise_on_error=False)
            assert result.success  # the broken user fails alone: partial
            for _ in range(2):
                invoke(
                    hooked,
                    SUCCEEDED_SENSOR,
                    result.dagster_run,
                    run_event(result, DagsterEventType.RUN_SUCCESS),
                )
        assert row(hooked, result.run_id)["status"] == "partial"
        friday = (DAY - timedelta(days=7)).isoformat()
        assert receiver.kinds() == [
            ("partial_over_limit", "NYSE", friday),
            ("run_failed", "XETRA", DAY.isoformat()),
        ]
        failed = next(r for r in receiver.received if r["kind"] == "run_failed")
        assert failed["run_id"] == run.run_id and failed["detail"] == "run canceled"
        assert failed["text"].startswith(f"[overnight] XETRA {DAY}: run failed: failed, ")
    finally:
        clear_alerts()
