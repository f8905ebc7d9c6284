"""Progress and structured logs (BEHAVIOUR §9 Progress, issue 22 item 5): each batch of a shard
logs batch n of N, users, failed, seconds, users/s and the time left, in the step's Dagster
log and the process log; the original's three events carry their fields with masked user
ids; `LOG_FORMAT=json` writes one JSON object per line."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from dagster import DagsterInstance, job, op
from opentelemetry.sdk.trace import TracerProvider

from overnight_pipeline import logs
from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.calculation import MARKET_DATA_POOL
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.loggers import PROCESS_LOGGER, PYTHON_LOGGER
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.runner import prepare_home
from overnight_pipeline.settings import load_settings
from overnight_pipeline.steps.progress import BATCH_PROCESSED, JOB_STARTED, USER_FAILED
from overnight_pipeline_tests.pipeline.conftest import BROKEN_USER, DAY
from overnight_pipeline_tests.support.databases import REDIS_URL

OVERNIGHT = str(Path(sys.executable).with_name("overnight"))
MARKET = "NYSE"  # the broken user's market


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A SQLite Dagster home written from deploy/dagster.yaml, as `make demo` writes one."""
    monkeypatch.delenv("DAGSTER_PG_URL", raising=False)
    yield prepare_home(tmp_path / "dagster-home")


def _events(records: list[logging.LogRecord], name: str) -> list[logging.LogRecord]:
    return [r for r in records if getattr(r, "event", None) == name]


def test_a_partition_logs_its_progress_and_the_three_events(
    pipeline_db: str, redis_prefix: str, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(
        database_url=pipeline_db, redis_url=REDIS_URL, cache_prefix=redis_prefix, user_batch_size=8
    )
    defs = definitions_for(settings, env_vars=False)
    caplog.set_level(logging.INFO, logger=PYTHON_LOGGER)
    with DagsterInstance.from_config(str(home)) as instance:
        result = defs.resolve_job_def(OVERNIGHT_JOB).execute_in_process(
            instance=instance,
            partition_key=partition_key(MARKET, DAY),
            run_config={"loggers": {PROCESS_LOGGER: {"config": {"log_level": "INFO"}}}},
        )
        assert result.success
        dagster_log = [e.user_message for e in instance.all_logs(result.run_id)]
        # The provider steps went through the instance's `market_data` pool, whose limit
        # is the dagster.yaml's default.
        pool = instance.event_log_storage.get_concurrency_info(MARKET_DATA_POOL)
        assert pool.slot_count == 1 and not pool.claimed_slots

    records = [r for r in caplog.records if r.name == PYTHON_LOGGER]
    (started,) = _events(records, JOB_STARTED)
    users = started.userCount  # type: ignore[attr-defined]
    assert users > 8 and started.jobType == "scoring"  # type: ignore[attr-defined]
    assert started.targetMarkets == [MARKET]  # type: ignore[attr-defined]
    cid = started.correlationId  # type: ignore[attr-defined]
    batches = _events(records, BATCH_PROCESSED)
    count = -(-users // 8)
    assert len(batches) == count and count >= 2
    for n, record in enumerate(batches, start=1):
        fields = logs.fields_of(record)
        assert fields["batchNumber"] == n and fields["batchCount"] == count
        assert fields["correlationId"] == cid
        assert fields["duration"] >= 0 and fields["seconds"] >= 0
        assert fields["usersPerSecond"] >= 0 and fields["etaSeconds"] >= 0
        assert f"batch {n} of {count}" in record.getMessage()
        assert "users/s" in record.getMessage() and "left" in record.getMessage()
    assert sum(r.usersProcessed for r in batches) == users  # type: ignore[attr-defined]
    assert batches[-1].etaSeconds == 0  # type: ignore[attr-defined]
    assert sum(r.usersFailed for r in batches) == 1  # type: ignore[attr-defined]

    (failed,) = _events(records, USER_FAILED)
    assert failed.levelno == logging.ERROR
    assert failed.userId == f"{str(BROKEN_USER)[:8]}…"  # type: ignore[attr-defined]
    assert failed.stage == "inputs" and failed.error  # type: ignore[attr-defined]
    assert failed.correlationId == cid  # type: ignore[attr-defined]
    # No full user id in any line of the process log.
    assert not any(str(BROKEN_USER) in r.getMessage() for r in records)
    # The same lines are in the step's Dagster log (the UI's run view).
    assert sum(BATCH_PROCESSED in m for m in dagster_log) == count
    assert any(JOB_STARTED in m for m in dagster_log)
    assert any(USER_FAILED in m and "00000000…" in m for m in dagster_log)


def test_json_lines_carry_the_fields_the_correlation_id_and_the_trace_id() -> None:
    record = logging.makeLogRecord(
        {
            "name": "x",
            "levelno": logging.INFO,
            "levelname": "INFO",
            "msg": "hello %s",
            "args": ("you",),
        }
    )
    record.batchNumber = 3
    formatter = logs.JsonFormatter()
    tracer = TracerProvider().get_tracer(__name__)
    with logs.correlation("c0ffee"), tracer.start_as_current_span("request") as span:
        doc = json.loads(formatter.format(record))
    assert doc["message"] == "hello you" and doc["level"] == "INFO" and doc["logger"] == "x"
    assert doc["batchNumber"] == 3 and doc["correlationId"] == "c0ffee"
    assert doc["traceId"] == format(span.get_span_context().trace_id, "032x")
    assert doc["time"].endswith("+00:00")
    outside = json.loads(formatter.format(record))
    assert "traceId" not in outside and "correlationId" not in outside


@op
def _says_hello(context) -> None:  # type: ignore[no-untyped-def]
    context.log.info("hello from a step", extra={"correlationId": "c1", "usersProcessed": 4})


@job
def _hello_job() -> None:
    _says_hello()


def test_the_instance_log_handler_writes_json_lines_for_dagster_processes(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setattr(logs, "_configured", False)  # as in the daemon's run workers
    from overnight_pipeline.settings import get_settings

    get_settings.cache_clear()
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    try:
        with DagsterInstance.from_config(str(home)) as instance:
            assert any(isinstance(h, logs.DagsterHandler) for h in instance.get_handlers())
            assert _hello_job.execute_in_process(instance=instance).success
    finally:
        get_settings.cache_clear()
    # Dagster's console logger writes its own text lines beside them (it cannot be replaced
    # from the instance): the handler's lines are the JSON ones.
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line[:1] == "{"]
    (hello,) = [d for d in lines if d["message"] == "hello from a step"]
    assert hello["correlationId"] == "c1" and hello["usersProcessed"] == 4
    assert hello["runId"] and hello["stepKey"] == "_says_hello" and hello["level"] == "INFO"
    # Dagster's own events below INFO (step starts, successes) are left out: level INFO.
    assert all(d["runId"] and d["level"] != "DEBUG" for d in lines)


def test_overnight_run_with_log_format_json_writes_json_lines(
    pipeline_db: str, redis_prefix: str, tmp_path: Path
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "DAGSTER"))}
    env.update(
        DATABASE_URL=pipeline_db,
        REDIS_URL=REDIS_URL,
        CACHE_PREFIX=redis_prefix,
        LOG_FORMAT="json",
        USER_BATCH_SIZE="10",
    )
    done = subprocess.run(
        [OVERNIGHT, "run", "--market", "B3", "--date", DAY.isoformat()],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines: list[dict[str, Any]] = [json.loads(line) for line in done.stderr.splitlines()]
    assert {"time", "level", "logger", "message"} <= set(lines[0])
    batches = [d for d in lines if d.get("event") == BATCH_PROCESSED]
    assert batches and batches[0]["batchNumber"] == 1 and batches[0]["market"] == "B3"
    assert all(d["correlationId"] == batches[0]["correlationId"] for d in batches)
    assert all(d["runId"] for d in batches)
    (started,) = [d for d in lines if d.get("event") == JOB_STARTED]
    assert started["userCount"] == sum(d["usersProcessed"] for d in batches)
    # The summary table stays on stdout.
    assert "B3 " + DAY.isoformat() in done.stdout
