"""A partition's users fan out over shards (BEHAVIOUR §9): the results do not depend on the shard
count nor on the executor, a failed shard is re-executed alone, and the replay check is red
when a stored result no longer matches its events."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from dagster import (
    AssetKey,
    DagsterEventType,
    DagsterInstance,
    ExecuteInProcessResult,
    ReexecutionOptions,
    execute_job,
    instance_for_test,
)
from sqlalchemy import Engine, select, text

from overnight_pipeline.core.audit import correlation_id_for
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.calculation import SCORES_AND_RECOMMENDATIONS
from overnight_pipeline.defs.executors import PRELOAD
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.settings import Settings, load_settings
from overnight_pipeline.steps.calculation import shard_of
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.storage.models import (
    calculation_assets_table,
    calculation_events_table,
    recommendations_table,
)
from overnight_pipeline.storage.scores import asset_scores_table
from overnight_pipeline_tests.pipeline.conftest import DAY
from overnight_pipeline_tests.support.databases import REDIS_URL, redis_namespace
from overnight_pipeline_tests.support.shard_job import reconstructable_job

REPO = Path(__file__).resolve().parents[2]
MARKET = "NYSE"
KEY = f"{DAY.isoformat()}|{MARKET}"
# The tags the daemon gives a run of the partition (what `execute_job` needs to build it).
TAGS = {
    "dagster/partition": KEY,
    "dagster/partition/date": DAY.isoformat(),
    "dagster/partition/market": MARKET,
}
VOLATILE = {"runId", "generatedAt"}  # differ between any two runs, sharded or not
# Most runs compared recompute scores, recommendations and the cache from the stored market
# data (the synthetic provider's data is a function of the date, so full runs compare too).
COMPUTED = [AssetKey("asset_scores"), AssetKey("recommendations"), AssetKey("recommendation_cache")]


def shard_config(shards: int) -> dict[str, Any]:
    """The launchpad's run config that overrides the shard count of one run."""
    return {
        "ops": {
            SCORES_AND_RECOMMENDATIONS: {"ops": {"plan_shards": {"config": {"shards": shards}}}}
        }
    }


def _stable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_stable(v) for v in value]
    return value


def outcome(engine: Engine, prefix: str, correlation_id: uuid.UUID) -> dict[str, Any]:
    """Everything a calculation left behind, without what differs between any two runs
    (timestamps, run ids, correlation ids): events, scores, the asset-X index, the
    recommendation rows and both cache documents of every user."""
    e, s, a, r = (
        calculation_events_table.c,
        asset_scores_table.c,
        calculation_assets_table.c,
        recommendations_table.c,
    )
    with engine.connect() as conn:
        events = sorted(
            (str(u), kind, orjson.dumps(_stable(p), option=orjson.OPT_SORT_KEYS).decode())
            for u, kind, p in conn.execute(
                select(e.user_id, e.event_type, e.payload).where(e.correlation_id == correlation_id)
            )
        )
        users = sorted({u for u, _, _ in events})
        scores = sorted(
            tuple(map(str, row))
            for row in conn.execute(
                select(
                    s.user_id, s.asset_id, s.market, s.score, s.max_possible_score, s.breakdown
                ).where(s.correlation_id == correlation_id)
            )
        )
        # The (asset, user, score) entries of the index, whatever arrays hold them.
        index = sorted(
            (str(x), str(u), str(v))
            for x, users_of, values in conn.execute(
                select(a.asset_id, a.user_ids, a.scores).where(a.correlation_id == correlation_id)
            )
            for u, v in zip(users_of, values, strict=True)
        )
        rows = sorted(
            (str(u), str(total), orjson.dumps(_stable(p), option=orjson.OPT_SORT_KEYS).decode())
            for u, total, p in conn.execute(
                select(r.user_id, r.total_investable, r.payload).where(
                    r.correlation_id == correlation_id
                )
            )
        )
    client = redis.Redis.from_url(REDIS_URL)
    cached = {}
    for uid in users:
        for kind in ("recs", "portfolio"):
            raw = client.get(f"{prefix}{kind}:{uid}")
            cached[f"{kind}:{uid}"] = None if raw is None else _stable(orjson.loads(raw))
    client.close()
    return {"events": events, "scores": scores, "index": index, "rows": rows, "cache": cached}


def settings_for(pipeline_db: str, prefix: str, **overrides: object) -> Settings:
    return load_settings(
        database_url=pipeline_db,
        redis_url=REDIS_URL,
        cache_prefix=prefix,
        user_batch_size=25,
        **overrides,
    )


def run_in_process(
    settings: Settings, shards: int, assets: list[AssetKey] | None = COMPUTED
) -> ExecuteInProcessResult:
    job = definitions_for(settings, env_vars=False).resolve_job_def(OVERNIGHT_JOB)
    with DagsterInstance.ephemeral() as instance:
        result = job.execute_in_process(
            instance=instance,
            partition_key=partition_key(MARKET, DAY),
            run_config=shard_config(shards),
            asset_selection=assets,
        )
    assert result.success
    return result


def cid_of(run_id: str) -> uuid.UUID:
    return correlation_id_for(f"{run_id}:{KEY}")


@pytest.fixture(scope="module")
def reference(pipeline_db: str) -> Iterator[dict[str, Any]]:
    """The unsharded calculation every other run is compared with."""
    for prefix in redis_namespace("shards1"):
        engine = make_engine(pipeline_db)
        run_in_process(settings_for(pipeline_db, prefix), shards=1, assets=None)  # market data
        result = run_in_process(settings_for(pipeline_db, prefix), shards=1)
        found = outcome(engine, prefix, cid_of(result.run_id))
        engine.dispose()
        yield found


def test_the_reference_run_is_complete(reference: dict[str, Any]) -> None:
    kinds = Counter(kind for _, kind, _ in reference["events"])
    users = {u for u, _, _ in reference["events"]}
    assert len(users) > 20 and kinds["CALC_COMPLETED"] == len(users)
    assert kinds["INPUTS_CAPTURED"] == kinds["SCORES_COMPUTED"] == len(reference["rows"])
    assert all(reference["cache"][f"recs:{u}"] is not None for u, _, _ in reference["rows"])


@pytest.mark.parametrize("shards", [2, 5])
def test_results_are_identical_for_any_shard_count(
    pipeline_db: str, reference: dict[str, Any], shards: int
) -> None:
    for prefix in redis_namespace(f"shards{shards}"):
        engine = make_engine(pipeline_db)
        result = run_in_process(settings_for(pipeline_db, prefix), shards=shards)
        shard_steps = {
            e.step_key
            for e in result.all_events
            if e.is_step_success and "score_and_recommend_shard[" in (e.step_key or "")
        }
        assert len(shard_steps) == shards
        assert outcome(engine, prefix, cid_of(result.run_id)) == reference
        engine.dispose()


def test_shards_partition_the_users_by_a_stable_hash() -> None:
    ids = [uuid.UUID(int=i * 7919 + 11) for i in range(5000)]
    for shards in (2, 5):
        counts = Counter(shard_of(u, shards) for u in ids)
        assert set(counts) == set(range(shards))
        assert min(counts.values()) > 0.8 * len(ids) / shards
    # The same id lands in the same shard in every process (no per-process hash seed).
    assert shard_of(uuid.UUID("6f1c0000-0000-4000-8000-000000000001"), 5) == 1


@pytest.fixture
def persistent_instance() -> Iterator[DagsterInstance]:
    with instance_for_test() as instance:
        yield instance


# The multiprocess executor as the deployment starts it (defs/executors.py): step processes
# forked from a server that imported the definitions once, instead of a fresh interpreter per
# step importing them again (≈ 3.5 s a step; this run has about ten steps).
FORKSERVER = {"max_concurrent": 2, "start_method": {"forkserver": {"preload_modules": PRELOAD}}}


def test_the_multiprocess_executor_gives_the_same_results(
    pipeline_db: str,
    reference: dict[str, Any],
    persistent_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for prefix in redis_namespace("multiprocess"):
        env = {
            "DATABASE_URL": pipeline_db,
            "REDIS_URL": REDIS_URL,
            "CACHE_PREFIX": prefix,
            "USER_BATCH_SIZE": "25",
            "USER_SHARDS": "2",
            "OVERNIGHT_EXECUTOR": "multiprocess",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        job = reconstructable_job()
        with execute_job(
            job,
            instance=persistent_instance,
            tags=TAGS,
            run_config={"execution": {"config": {"multiprocess": FORKSERVER}}},
        ) as result:
            assert result.success
            retried = [
                str(e.event_specific_data)[:2000]
                for e in result.all_events
                if e.event_type == DagsterEventType.STEP_UP_FOR_RETRY
            ]
            assert retried == []
            starts = [
                e
                for e in result.all_events
                if e.is_step_start and "score_and_recommend_shard[" in (e.step_key or "")
            ]
            pids = {e.pid for e in starts}
            run_id = result.run_id
        assert len(starts) == len(pids) == 2  # one process per shard step
        engine = make_engine(pipeline_db)
        assert outcome(engine, prefix, cid_of(run_id)) == reference
        engine.dispose()


def _fail_writes_of(engine: Engine, user: uuid.UUID) -> None:
    with engine.begin() as conn:
        conn.execute(
            text(
                f"""
            CREATE OR REPLACE FUNCTION drill_fail_shard() RETURNS trigger AS $$
            BEGIN
              IF NEW.user_id = '{user}'::uuid THEN
                RAISE EXCEPTION 'injected failure for user %', NEW.user_id;
              END IF;
              RETURN NEW;
            END $$ LANGUAGE plpgsql;
            CREATE TRIGGER drill_fail_shard BEFORE INSERT ON calculation_events
              FOR EACH ROW EXECUTE FUNCTION drill_fail_shard();
            """
            )
        )


def _heal(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.execute(text("DROP TRIGGER IF EXISTS drill_fail_shard ON calculation_events"))


def test_a_failed_shard_is_re_executed_alone_and_every_user_is_done_once(
    pipeline_db: str,
    reference: dict[str, Any],
    persistent_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    shards = 3
    users = sorted({uuid.UUID(u) for u, _, _ in reference["rows"]})
    victim = users[len(users) // 2]
    failing = shard_of(victim, shards)
    engine = make_engine(pipeline_db)
    for prefix in redis_namespace("reexecute"):
        for name, value in {
            "DATABASE_URL": pipeline_db,
            "REDIS_URL": REDIS_URL,
            "CACHE_PREFIX": prefix,
            "USER_BATCH_SIZE": "8",
            "USER_SHARDS": str(shards),
            "OVERNIGHT_EXECUTOR": "in_process",
        }.items():
            monkeypatch.setenv(name, value)
        job = reconstructable_job()
        tags = TAGS
        _fail_writes_of(engine, victim)
        try:
            with execute_job(job, instance=persistent_instance, tags=tags) as first:
                assert not first.success
                failed = {e.step_key for e in first.all_events if e.is_step_failure}
                parent = first.run_id
        finally:
            _heal(engine)
        assert failed == {
            f"{SCORES_AND_RECOMMENDATIONS}.score_and_recommend_shard"
            f"[{MARKET}_{DAY:%Y%m%d}_shard_{failing}_of_{shards}]"
        }
        # The failing shard committed its batches before the victim's: the retry resumes.
        with engine.connect() as conn:
            before = Counter(
                conn.scalars(
                    select(calculation_events_table.c.event_type).where(
                        calculation_events_table.c.correlation_id == cid_of(parent)
                    )
                )
            )
        assert 0 < before["CALC_COMPLETED"] < len(users)

        with execute_job(
            job,
            instance=persistent_instance,
            reexecution_options=ReexecutionOptions.from_failure(parent, persistent_instance),
            tags=tags,
        ) as second:
            assert second.success
            executed = {
                e.step_key for e in second.all_events if e.event_type == DagsterEventType.STEP_START
            }
        assert executed == {
            *failed,
            f"{SCORES_AND_RECOMMENDATIONS}.collect_shards",
            "recommendation_cache",
        }
        # One calculation (the root run's), each user exactly once, the same results.
        assert outcome(engine, prefix, cid_of(parent)) == reference
    engine.dispose()


def test_the_replay_check_is_red_when_a_stored_score_is_tampered_with(
    pipeline_db: str,
    reference: dict[str, Any],
    persistent_instance: DagsterInstance,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for prefix in redis_namespace("replay"):
        for name, value in {
            "DATABASE_URL": pipeline_db,
            "REDIS_URL": REDIS_URL,
            "CACHE_PREFIX": prefix,
            "USER_SHARDS": "2",
            "REPLAY_SAMPLE": "10000",
            "OVERNIGHT_EXECUTOR": "in_process",
        }.items():
            monkeypatch.setenv(name, value)
        job = reconstructable_job()
        tags = TAGS
        with execute_job(job, instance=persistent_instance, tags=tags) as first:
            assert first.success
            green = checks_of(first.all_events)
            run_id = first.run_id
        assert green["recommendations:replay_matches"] == (True, "ERROR")
        # Someone edits one stored score: the check, evaluated again for the same
        # calculation (re-executing the collect step from the UI), is red.
        engine = make_engine(pipeline_db)
        s = asset_scores_table.c
        with engine.begin() as conn:
            user = conn.scalar(select(s.user_id).where(s.correlation_id == cid_of(run_id)).limit(1))
            conn.execute(
                text("UPDATE user_scores SET scores[1] = scores[1] + 1 WHERE user_id = :u"),
                {"u": user},
            )
        with execute_job(
            job,
            instance=persistent_instance,
            reexecution_options=ReexecutionOptions(
                parent_run_id=run_id,
                step_selection=[f"{SCORES_AND_RECOMMENDATIONS}.collect_shards"],
            ),
            tags=tags,
        ) as again:
            red = checks_of(again.all_events)
            detail = next(
                e.asset_check_evaluation_data
                for e in again.all_events
                if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION
                and e.asset_check_evaluation_data.check_name == "replay_matches"
            )
        assert red["recommendations:replay_matches"] == (False, "ERROR")
        assert str(user) in str(detail.metadata["differences"].value)
        engine.dispose()


def checks_of(events: Any) -> dict[str, tuple[bool, str]]:
    out = {}
    for e in events:
        if e.event_type == DagsterEventType.ASSET_CHECK_EVALUATION:
            ev = e.asset_check_evaluation_data
            out[f"{ev.asset_key.to_user_string()}:{ev.check_name}"] = (
                ev.passed,
                ev.severity.value,
            )
    return out


CELERY_BROKER = "redis://127.0.0.1:6379/14"


@pytest.fixture
def celery_workers(
    pipeline_db: str, tmp_path: Path, persistent_instance: DagsterInstance
) -> Iterator[tuple[dict[str, str], dict[str, Any]]]:
    """Two real celery worker processes (one task at a time each) on their own Redis key
    prefix, with the environment a worker machine would have; yields that environment and
    the celery executor config that reaches them."""
    prefix = f"celery-test-{uuid.uuid4().hex[:10]}:"
    options = {"global_keyprefix": prefix}
    config_dir = tmp_path / "celery"
    config_dir.mkdir()
    (config_dir / "dagster_celery_config.py").write_text(
        f"broker_url = {CELERY_BROKER!r}\n"
        f"result_backend = {CELERY_BROKER!r}\n"
        f"broker_transport_options = {options!r}\n"
        f"result_backend_transport_options = {options!r}\n"
        "worker_prefetch_multiplier = 1\n"
    )
    namespace = redis_namespace("celery-cache")
    cache_prefix = next(namespace)
    env = {
        "DATABASE_URL": pipeline_db,
        "REDIS_URL": REDIS_URL,
        "CACHE_PREFIX": cache_prefix,
        "USER_BATCH_SIZE": "25",
        "USER_SHARDS": "4",
        "OVERNIGHT_EXECUTOR": "celery",
        "CELERY_BROKER_URL": CELERY_BROKER,
    }
    worker_env = {
        **os.environ,
        **env,
        "PYTHONPATH": os.pathsep.join([str(config_dir), str(REPO)]),
        "DAGSTER_HOME": persistent_instance.root_directory,
    }
    celery = Path(sys.executable).with_name("celery")
    logs = [tmp_path / f"worker{i}.log" for i in (1, 2)]
    workers = []
    for i, log in enumerate(logs, 1):
        with log.open("w") as out:
            workers.append(
                subprocess.Popen(
                    [
                        str(celery),
                        "-A",
                        "dagster_celery.app",
                        "worker",
                        "--concurrency=1",
                        "--prefetch-multiplier=1",
                        "--without-gossip",
                        "--without-mingle",
                        "-n",
                        f"overnight{i}@%h",
                        "-l",
                        "INFO",
                    ],
                    cwd=REPO,
                    env=worker_env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + 60
        while not all("ready" in log.read_text() for log in logs):
            assert all(w.poll() is None for w in workers), [log.read_text() for log in logs]
            assert time.monotonic() < deadline, [log.read_text() for log in logs]
            time.sleep(0.2)
        config = {
            "broker": CELERY_BROKER,
            "backend": CELERY_BROKER,
            "config_source": {
                "broker_transport_options": options,
                "result_backend_transport_options": options,
            },
        }
        yield env, config
    finally:
        for w in workers:
            w.terminate()
        for w in workers:
            w.wait(timeout=30)
        client = redis.Redis.from_url(CELERY_BROKER)
        for key in client.scan_iter(f"{prefix}*", count=1000):
            client.delete(key)
        client.close()
        for _ in namespace:
            pass


def test_celery_workers_give_the_same_results(
    pipeline_db: str,
    reference: dict[str, Any],
    persistent_instance: DagsterInstance,
    celery_workers: tuple[dict[str, str], dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env, config = celery_workers
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    job = reconstructable_job()
    with execute_job(
        job,
        instance=persistent_instance,
        tags=TAGS,
        run_config={"execution": {"config": {"celery": config}}},
    ) as result:
        assert result.success, [
            str(e.event_specific_data)[:3000] for e in result.all_events if e.is_failure
        ]
        shard_pids = {
            e.pid
            for e in result.all_events
            if e.is_step_start and "score_and_recommend_shard[" in (e.step_key or "")
        }
        run_id = result.run_id
    # Four shard steps ran as celery tasks, on both workers (not in this process).
    assert len(shard_pids) == 2 and os.getpid() not in shard_pids
    engine = make_engine(pipeline_db)
    assert outcome(engine, env["CACHE_PREFIX"], cid_of(run_id)) == reference
    engine.dispose()
