"""`GET /metrics` (BEHAVIOUR §6, issue 22 item 4): scraped after real requests and parsed with
prometheus-client's own parser; the run-derived values from real job-run rows; METRICS=off,
same and a port of its own (a real server on it)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, date, datetime
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import Engine, delete
from starlette.testclient import TestClient

from dashboard_api.metrics import AppMetrics
from dashboard_api.services import ApiOptions
from overnight_pipeline.cli.checks import InvalidSetting, ServiceError
from overnight_pipeline.cli.dashboard import check_metrics_port
from overnight_pipeline.settings import Settings
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.cache_entries import recs_key
from overnight_pipeline.storage.models import overnight_job_runs_table
from overnight_pipeline_tests.api.conftest import FAST, bearer, token_for
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.support.stored_results import Planner

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]
AUDIT_ROUTE = "/api/audit/assets/{market}/{symbol}/calculations"


def parse(text: str) -> Samples:
    """Every sample of a scrape by (name, sorted labels), through prometheus-client's parser."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def metrics_of(client: TestClient) -> AppMetrics:
    found: AppMetrics = client.app.metrics  # type: ignore[attr-defined]
    return found


def test_requests_and_cache_reads_by_result_never_naming_a_user(
    client: TestClient,
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    hit, miss, tampered = new_user(), new_user(), new_user()
    cache(hit, tampered)
    sync_redis.set(recs_key(tampered.user_id, redis_prefix), b"{not json", keepttl=True)
    for user in (hit, hit, miss, tampered):
        response = client.get("/api/dashboard", headers=bearer(token_for(user.user_id)))
        assert response.status_code == 200
    assert client.get(f"/api/audit/assets/NYSE/{hit.user_id}/calculations").status_code == 401
    assert client.get(f"/nowhere/{hit.user_id}").status_code == 404

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = response.text
    samples = parse(text)
    reads = "dashboard_cache_reads_total"
    assert value(samples, reads, result="hit") == 2
    assert value(samples, reads, result="miss") == 1
    assert value(samples, reads, result="rejected") == 1
    assert value(samples, reads, result="redis_error") == 0
    requests = "dashboard_requests_total"
    assert value(samples, requests, route="/api/dashboard", status="200") == 4
    assert value(samples, requests, route=AUDIT_ROUTE, status="401") == 1
    assert value(samples, requests, route="unmatched", status="404") == 1
    duration = "dashboard_request_duration_seconds_count"
    assert value(samples, duration, route="/api/dashboard") == 4
    assert value(samples, "dashboard_redis_breaker_state", state="closed") == 1
    assert value(samples, "dashboard_redis_breaker_state", state="open") == 0
    # Routes are templates: neither the ids in the paths nor the users' tokens show.
    for user in (hit, miss, tampered):
        assert str(user.user_id) not in text and user.user_id.hex not in text
    assert "/nowhere" not in text and "/api/audit/assets/NYSE" not in text
    # The scrape itself is counted by the next one.
    again = parse(client.get("/metrics").text)
    assert value(again, requests, route="/metrics", status="200") == 1


def test_redis_errors_are_counted_and_the_open_breaker_exported(
    make_client: Callable[..., TestClient], new_user: Callable[..., Planner]
) -> None:
    # Nothing listens there; a long cooldown keeps the breaker open while the test reads it.
    options = replace(FAST, redis_cooldown=60.0)
    client = make_client(options, redis_url=f"redis://127.0.0.1:{closed_port()}/0")
    user = new_user()
    for _ in range(4):  # three failures open the breaker; the fourth read is skipped
        response = client.get("/api/dashboard", headers=bearer(token_for(user.user_id)))
        assert response.status_code == 200 and response.json()["data"]["fromCache"] is False
    samples = parse(client.get("/metrics").text)
    assert value(samples, "dashboard_cache_reads_total", result="redis_error") == 4
    assert value(samples, "dashboard_cache_reads_total", result="miss") == 0
    assert value(samples, "dashboard_redis_breaker_state", state="open") == 1
    assert value(samples, "dashboard_redis_breaker_state", state="closed") == 0


# Run-derived values: job-run rows of three markets with codes of their own (no other test's
# rows count), judged at a fixed time on the real exchange calendars. Wednesday 4 March 2026,
# 18:00 UTC: New York opened at 14:30 UTC (before its DST), London at 08:00, Tokyo at 00:00.
NOW = datetime(2026, 3, 4, 18, 0, tzinfo=UTC)
MARKETS = [
    {"code": "MTNY", "calendar": "XNYS", "timezone": "America/New_York", "currency": "USD"},
    {"code": "MTTK", "calendar": "XTKS", "timezone": "Asia/Tokyo", "currency": "JPY"},
    {"code": "MTLN", "calendar": "XLON", "timezone": "Europe/London", "currency": "GBP"},
]


def at(day: int, hour: int, minute: int = 0, month: int = 3) -> datetime:
    return datetime(2026, month, day, hour, minute, tzinfo=UTC)


# (market, session, status, started, finished, users, failed, cache warmed)
RUNS = [
    ("MTNY", date(2026, 2, 27), "completed", at(27, 12, month=2), at(27, 13, month=2), 90, 0, True),
    ("MTNY", date(2026, 3, 2), "completed", at(2, 12), at(2, 12, 30), 100, 0, True),  # ready
    ("MTNY", date(2026, 3, 3), "completed", at(3, 14), at(3, 15), 100, 0, True),  # late
    ("MTNY", date(2026, 3, 4), "failed", at(4, 12), at(4, 12, 10), 100, 7, True),  # failed
    ("MTNY", date(2026, 3, 5), "started", at(4, 17), None, 0, 0, False),  # tomorrow's
    ("MTTK", date(2026, 3, 3), "partial", at(2, 22), at(2, 23), 50, 1, False),  # no cache
    ("MTTK", date(2026, 3, 4), "partial", at(3, 22), at(3, 23, 30), 50, 3, True),  # ready
]


@pytest.fixture
def job_run_rows(pg_engine: Engine) -> Iterator[None]:
    tag = f"metrics-test-{uuid.uuid4().hex[:8]}"
    with pg_engine.begin() as conn:
        for i, (market, day, status, started, finished, users, failed, warmed) in enumerate(RUNS):
            row = job_runs.JobRun(
                run_id=f"{tag}-{i}",
                correlation_id=uuid.uuid4(),
                started_at=started,
                status=status,
                market=market,
                market_date=day,
                completed_at=finished,
                users_processed=users,
                users_failed=failed,
                metrics={"cache_warmed": warmed},
            )
            if status == "started":
                job_runs.record_started(conn, row)
            else:
                job_runs.record_finished(conn, row)
    yield
    with pg_engine.begin() as conn:
        j = overnight_job_runs_table.c
        conn.execute(delete(overnight_job_runs_table).where(j.run_id.like(f"{tag}-%")))


@pytest.fixture
def markets_file(tmp_path: Path) -> Path:
    path = tmp_path / "markets.json"
    path.write_text(json.dumps(MARKETS))
    return path


def run_options(ttl: float = 60.0) -> ApiOptions:
    return replace(FAST, metrics_ttl=ttl, metrics_clock=lambda: NOW)


def test_run_outcomes_per_market_judged_on_the_exchange_calendars(
    make_client: Callable[..., TestClient], markets_file: Path, job_run_rows: None
) -> None:
    client = make_client(run_options(), markets_file=markets_file)
    samples = parse(client.get("/metrics").text)

    assert value(samples, "overnight_job_runs_up") == 1
    ready = "overnight_last_ready_timestamp_seconds"
    assert value(samples, ready, market="MTNY") == at(2, 12, 30).timestamp()
    assert value(samples, ready, market="MTTK") == at(3, 23, 30).timestamp()  # ready-partial
    assert value(samples, ready, market="MTLN") == 0  # never ran
    # Sessions of March whose open has passed: New York's 3rd (late) and 4th (failed);
    # Tokyo's 2nd (missing) and 3rd (partial, cache not written); London's 2nd to 4th. The
    # February sessions without a run are last month's; tomorrow's session is not due.
    missed = "overnight_deadline_missed_total"
    assert value(samples, missed, market="MTNY") == 2
    assert value(samples, missed, market="MTTK") == 2
    assert value(samples, missed, market="MTLN") == 3
    runs = "overnight_runs_total"
    assert value(samples, runs, market="MTNY", status="completed") == 2  # not February's
    assert value(samples, runs, market="MTNY", status="failed") == 1
    assert value(samples, runs, market="MTNY", status="partial") == 0
    assert value(samples, runs, market="MTTK", status="partial") == 2
    assert value(samples, runs, market="MTLN", status="completed") == 0
    failed = "overnight_users_failed"
    assert value(samples, failed, market="MTNY") == 7  # the newest finished run's
    assert value(samples, failed, market="MTTK") == 3
    assert value(samples, failed, market="MTLN") is None

    # Cached: more scrapes, no more statements (two per refresh, for every market at once).
    assert metrics_of(client).runs.reads == 2
    client.get("/metrics")
    assert metrics_of(client).runs.reads == 2


def test_metrics_on_a_port_of_their_own_and_not_on_the_dashboards(
    make_client: Callable[..., TestClient], markets_file: Path, job_run_rows: None
) -> None:
    port = closed_port()
    client = make_client(run_options(), markets_file=markets_file, metrics=str(port))
    assert client.get("/metrics").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]

    def scrape() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            return str(r.read().decode())

    # Concurrent first scrapes share one read of the job runs.
    with ThreadPoolExecutor(8) as pool:
        texts = list(pool.map(lambda _: scrape(), range(8)))
    assert metrics_of(client).runs.reads == 2
    samples = parse(texts[0])
    assert value(samples, "overnight_deadline_missed_total", market="MTNY") == 2
    assert value(samples, "dashboard_redis_breaker_state", state="closed") == 1
    client.get("/healthz")
    assert value(parse(scrape()), "dashboard_requests_total", route="/healthz", status="200") == 1

    client.__exit__(None, None, None)  # the lifespan's end stops the second server
    with pytest.raises(urllib.error.URLError):
        scrape()


def test_metrics_off_serves_and_measures_nothing(
    make_client: Callable[..., TestClient], settings: Settings
) -> None:
    client = make_client(metrics="off")
    assert client.get("/metrics").status_code == 404
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]
    assert metrics_of(client).requests is None


def test_overnight_serve_starts_the_metrics_port_beside_the_dashboard(
    settings: Settings, tmp_path: Path
) -> None:
    """The real command: METRICS=PORT serves the metrics there, and only there."""
    api, port = closed_port(), closed_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "METRICS"))},
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "CACHE_PREFIX": settings.cache_prefix,
        "DASHBOARD_SECRET": settings.dashboard_secret,
        "METRICS": str(port),
    }
    overnight = str(Path(sys.executable).with_name("overnight"))
    log = tmp_path / "serve.log"
    with log.open("w") as stderr:
        serve = subprocess.Popen([overnight, "serve", "--port", str(api)], env=env, stderr=stderr)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api}/healthz", timeout=2):
                    break
            except OSError:
                assert serve.poll() is None and time.monotonic() < deadline, "serve did not start"
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            samples = parse(r.read().decode())
        assert value(samples, "dashboard_requests_total", route="/healthz", status="200") == 1
        assert value(samples, "overnight_job_runs_up") == 1
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"http://127.0.0.1:{api}/metrics", timeout=10)
        refused.value.close()
        assert refused.value.code == 404
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(30) == 0
    assert f"metrics on http://127.0.0.1:{port}/metrics" in log.read_text()


def test_a_metrics_port_in_use_or_the_dashboards_own_stops_serve_before_it_starts() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        with pytest.raises(ServiceError, match=rf"METRICS: cannot listen on 127.0.0.1:{taken} \("):
            check_metrics_port("127.0.0.1", taken, dashboard_port=8000)
    with pytest.raises(InvalidSetting, match="METRICS: 8000 is the dashboard's own port"):
        check_metrics_port("127.0.0.1", 8000, dashboard_port=8000)
    check_metrics_port("127.0.0.1", closed_port(), dashboard_port=8000)
