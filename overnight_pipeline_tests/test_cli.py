"""The `overnight` command as an operator runs it: bad settings and unreachable services end
in one line naming the variable, a documented exit code and no traceback (issue 13 §2)."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.trace import NoOpTracerProvider
from sqlalchemy import text

from overnight_pipeline import telemetry
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.telemetry import emit_run_span, tracer_provider

OVERNIGHT = str(Path(sys.executable).with_name("overnight"))
USER = "6f1c0000-0000-4000-8000-000000000001"
GOOD_MARKETS = [
    {"code": "NYSE", "calendar": "XNYS", "timezone": "America/New_York", "currency": "USD"}
]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def overnight(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "MARKET", "DAGSTER", "DATABASE_URL", "REDIS_URL"))
    }
    full.update(env)
    return subprocess.run(
        [OVERNIGHT, *args],
        env=full,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def refused(done: subprocess.CompletedProcess[str], code: int, line: str) -> None:
    assert done.returncode == code, (done.returncode, done.stderr)
    assert line in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    "command",
    [
        ["migrate"],
        ["seed", "--users", "1"],
        ["serve"],
        ["run", "--market", "NYSE", "--date", "2026-11-30"],
        ["demo", "--users", "1"],
        ["load", "FILE"],
    ],
)
def test_an_unreachable_database_is_named_for_every_command(
    command: list[str], tmp_path: Path
) -> None:
    port = closed_port()
    (tmp_path / "FILE").write_text(json.dumps({"assets": [], "users": []}))
    done = overnight(
        *command, cwd=tmp_path, DATABASE_URL=f"postgresql://root:pw@127.0.0.1:{port}/app"
    )
    refused(
        done, 3, f"error: DATABASE_URL: cannot connect to 127.0.0.1:{port} (connection refused)"
    )
    assert "pw" not in done.stderr


def test_a_missing_database_is_named(tmp_path: Path) -> None:
    done = overnight(
        "migrate",
        cwd=tmp_path,
        DATABASE_URL="postgresql://root@127.0.0.1:5432/overnight_no_such_db",
    )
    refused(
        done,
        3,
        "DATABASE_URL: cannot connect to 127.0.0.1:5432 (database "
        '"overnight_no_such_db" does not exist)',
    )


@pytest.mark.parametrize(
    ("name", "value", "line"),
    [
        (
            "DATABASE_URL",
            "postgresql+nodriver://root:pw@127.0.0.1/x",
            "DATABASE_URL: has driver 'nodriver'; use psycopg (got 'postgresql+nodriver://root:***@127.0.0.1/x')",
        ),
        ("DATABASE_URL", "postgresql://root@127.0.0.1:70000/x", "DATABASE_URL: has port 70000"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0", "REDIS_URL: has a port that is not a number"),
        ("REDIS_URL", "redis://127.0.0.1:6379/abc", "REDIS_URL: has database 'abc'"),
        ("OVERNIGHT_JOB_CRON", "0 4 * * 1-5L", "OVERNIGHT_JOB_CRON: is not a five-field cron"),
        (
            "OTEL_TRACES_EXPORTER",
            "zipkin",
            "OTEL_TRACES_EXPORTER: names no installed span exporter 'zipkin'",
        ),
        (
            "DASHBOARD_SECRET",
            "too-short",
            "DASHBOARD_SECRET: String should have at least 32 characters (got <9 characters, not shown>)",
        ),
        ("MARKET_DATA", "bloomberg", "MARKET_DATA: must be 'synthetic', 'http' or 'files:<dir>'"),
    ],
)
def test_a_malformed_setting_exits_2_before_any_work(
    name: str, value: str, line: str, tmp_path: Path
) -> None:
    done = overnight(
        "run", "--market", "NYSE", "--date", "2026-11-30", cwd=tmp_path, **{name: value}
    )
    refused(done, 2, line)
    assert not (tmp_path / ".data").exists()  # nothing was created, nothing ran


@pytest.mark.parametrize(
    ("content", "line"),
    [
        (None, "MARKETS_FILE: {path}: cannot read it (No such file or directory)"),
        ("{not json", "MARKETS_FILE: {path}: not a UTF-8 JSON file"),
        (json.dumps({"NYSE": {}}), "MARKETS_FILE: {path}: must be a non-empty JSON list"),
        (
            json.dumps([{"code": "NYSE", "calendar": "XNYS", "timezone": "America/New_York"}]),
            "MARKETS_FILE: {path}: [0].currency: Field required",
        ),
        (
            json.dumps([{**GOOD_MARKETS[0], "calendar": "XNOPE", "currency": "QQQ"}]),
            "[0].calendar: is not an exchange-calendars calendar (e.g. XNYS) (got 'XNOPE'); "
            "[0].currency: is not an ISO 4217 currency code (e.g. USD) (got 'QQQ')",
        ),
        (json.dumps(GOOD_MARKETS * 2), "[1].code: duplicate market 'NYSE'"),
    ],
)
def test_a_bad_markets_file_exits_2_naming_it(
    content: str | None, line: str, tmp_path: Path
) -> None:
    path = tmp_path / "markets.json"
    if content is not None:
        path.write_text(content)
    for command in (["run", "--market", "NYSE", "--date", "2026-11-30"], ["load", "x.json"]):
        (tmp_path / "x.json").write_text("{}")
        done = overnight(*command, cwd=tmp_path, MARKETS_FILE=str(path))
        refused(done, 2, line.format(path=path))


@pytest.mark.parametrize("missing", [None, "dir", "rates.csv"])
def test_market_data_files_must_hold_the_three_csvs(missing: str | None, tmp_path: Path) -> None:
    directory = tmp_path / "csv"
    if missing != "dir":
        directory.mkdir()
        for name in ("prices.csv", "fundamentals.csv", "rates.csv"):
            if name != missing:
                (directory / name).write_text("x\n")
    done = overnight(
        "run",
        "--market",
        "NYSE",
        "--date",
        "2026-11-30",
        cwd=tmp_path,
        MARKET_DATA=f"files:{directory}",
        DATABASE_URL=f"sqlite:///{tmp_path}/a.db",
    )
    if missing is None:
        # Past the check (here: to the run itself); only the files were in question.
        assert "MARKET_DATA" not in done.stderr
        return
    what = "no such directory" if missing == "dir" else "rates.csv is missing"
    refused(done, 2, f"error: MARKET_DATA: 'files:{directory}': {what}")


def test_unreachable_redis_is_reported_and_the_cache_step_fails_visibly(
    tmp_path: Path, pg_url: str
) -> None:
    port = closed_port()
    done = overnight(
        "run",
        "--market",
        "NYSE",
        "--date",
        "2026-11-30",
        cwd=tmp_path,
        DATABASE_URL=pg_url,
        REDIS_URL=f"redis://:pw@127.0.0.1:{port}/0",
    )
    assert f"warning: REDIS_URL: cannot connect to 127.0.0.1:{port} (" in done.stderr
    assert "pw@" not in done.stderr and "Traceback" not in done.stderr
    assert done.returncode in (0, 1)


def test_demo_runs_on_its_embedded_defaults_with_redis_unreachable(tmp_path: Path) -> None:
    done = overnight(
        "demo", "--users", "3", cwd=tmp_path, REDIS_URL=f"redis://127.0.0.1:{closed_port()}/0"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "unreachable, the cache step is skipped" in done.stdout
    assert "Traceback" not in done.stderr


def test_telemetry_that_cannot_export_never_changes_the_run(tmp_path: Path) -> None:
    """An OTLP collector that is not there: the run and its job-run row are as without one."""
    db = f"sqlite:///{tmp_path}/app.db"
    assert overnight("migrate", cwd=tmp_path, DATABASE_URL=db).returncode == 0
    seeded = overnight("seed", "--users", "3", cwd=tmp_path, DATABASE_URL=db)
    assert seeded.returncode == 0, seeded.stderr
    done = overnight(
        "run",
        "--market",
        "NYSE",
        "--date",
        "2026-11-30",
        "--skip-cache",
        cwd=tmp_path,
        DATABASE_URL=db,
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{closed_port()}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1",
        OTEL_BSP_SCHEDULE_DELAY="100",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    engine = make_engine(db)
    with engine.connect() as conn:
        statuses = conn.execute(text("SELECT status FROM overnight_job_runs")).scalars().all()
    engine.dispose()
    assert statuses == ["completed"]


def test_tracer_provider_never_raises(monkeypatch: pytest.MonkeyPatch, caplog: Any) -> None:
    monkeypatch.setattr(telemetry, "_providers", {})  # built here, not taken from another test
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    settings = load_settings(otel_service_name="tracer-never-raises")
    # Changed after the settings were read: the SDK itself refuses this combination.
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "1")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "10")
    with caplog.at_level(logging.WARNING, logger="overnight_pipeline.telemetry"):
        provider = tracer_provider(
            settings.model_copy(update={"otel_traces_exporter": "console,otlp"})
        )
    assert isinstance(provider, NoOpTracerProvider)
    assert "OpenTelemetry is off for this process" in caplog.text


def test_a_failing_tracer_never_raises_into_the_caller(caplog: Any) -> None:
    class Failing:
        def start_span(self, *args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("collector exploded")

    moment = datetime(2026, 11, 30, tzinfo=UTC)
    with caplog.at_level(logging.WARNING, logger="overnight_pipeline.telemetry"):
        emit_run_span(Failing(), start=moment, end=moment, attributes={})  # type: ignore[arg-type]
    assert "collector exploded" in caplog.text


def test_bsp_sizes_that_the_sdk_refuses_are_refused_at_start(tmp_path: Path) -> None:
    done = overnight(
        "token",
        USER,
        cwd=tmp_path,
        OTEL_BSP_MAX_QUEUE_SIZE="1",
        OTEL_BSP_MAX_EXPORT_BATCH_SIZE="10",
    )
    refused(done, 2, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE")


def test_the_run_date_and_market_are_checked(tmp_path: Path) -> None:
    done = overnight("run", "--market", "MOON", "--date", date.today().isoformat(), cwd=tmp_path)
    refused(done, 2, "error: --market must be one of NYSE")
    done = overnight("run", "--market", "NYSE", "--date", "30/11/2026", cwd=tmp_path)
    refused(done, 2, "error: --date must be YYYY-MM-DD (got '30/11/2026')")
