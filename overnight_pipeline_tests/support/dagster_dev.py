"""A real `dagster dev` (webserver + daemon + code server) on a PostgreSQL instance with the
repository's dagster.yaml, and a GraphQL client that sends what the Dagster UI sends."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
from sqlalchemy.engine import make_url

from overnight_pipeline_tests.support.databases import create_pg_database

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOCATION = "overnight_pipeline.definitions"
REPOSITORY = "__repository__"
ASSETS = (
    "exchange_rates",
    "asset_prices",
    "asset_fundamentals",
    "asset_scores",
    "recommendations",
    "recommendation_cache",
)
T = TypeVar("T")

LAUNCH_BACKFILL = """
mutation LaunchPartitionBackfill($backfillParams: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $backfillParams) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on Error { message }
  }
}"""

LAUNCH_RUN = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on Error { message }
  }
}"""

BACKFILL_STATUS = """
query Backfill($id: String!) {
  partitionBackfillOrError(backfillId: $id) {
    __typename
    ... on PartitionBackfill { id status }
    ... on Error { message }
  }
}"""

SENSOR_TICKS = """
query SensorTicks($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { ticks(limit: 1) { timestamp status runIds } } }
    ... on Error { message }
  }
}"""


SENSOR_STATE = """
query SensorState($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { id status ticks(limit: 1) { timestamp status } } }
    ... on Error { message }
  }
}"""

STOP_SENSOR = """
mutation StopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on Error { message }
  }
}"""

START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on Error { message }
  }
}"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], T | None], timeout: float, log: Path) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.5)
    tail = log.read_text(errors="replace")[-6000:] if log.exists() else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


@dataclass
class DagsterDev:
    url: str
    home: Path
    log: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]

    def graphql(self, query: str, **variables: Any) -> dict[str, Any]:
        response = httpx.post(
            f"{self.url}/graphql", json={"query": query, "variables": variables}, timeout=60
        )
        response.raise_for_status()
        body = response.json()
        assert "errors" not in body, body
        return body["data"]

    def launch_backfill(self, params: dict[str, Any]) -> str:
        result = self.graphql(LAUNCH_BACKFILL, backfillParams=params)["launchPartitionBackfill"]
        assert result["__typename"] == "LaunchBackfillSuccess", result
        return str(result["backfillId"])

    def launch_run(self, params: dict[str, Any]) -> str:
        result = self.graphql(LAUNCH_RUN, executionParams=params)["launchPipelineExecution"]
        assert result["__typename"] == "LaunchRunSuccess", result
        return str(result["run"]["runId"])

    def backfill_status(self, backfill_id: str) -> str:
        found = self.graphql(BACKFILL_STATUS, id=backfill_id)["partitionBackfillOrError"]
        return str(found["status"])


def repository_selector() -> dict[str, str]:
    return {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY}


def last_tick(dev: DagsterDev, sensor: str) -> dict[str, Any] | None:
    """The newest tick of `sensor` (timestamp, status, runIds), as its page in the UI shows
    it; None before its first."""
    found = dev.graphql(SENSOR_TICKS, selector={**repository_selector(), "sensorName": sensor})
    state = found["sensorOrError"]
    assert state["__typename"] == "Sensor", state
    ticks = state["sensorState"]["ticks"]
    return ticks[0] if ticks else None


def tick_after(dev: DagsterDev, sensor: str, when: float, timeout: float = 60) -> dict[str, Any]:
    """The first finished tick of `sensor` that started after `when` (epoch seconds)."""

    def finished() -> dict[str, Any] | None:
        tick = last_tick(dev, sensor)
        done = tick is not None and tick["timestamp"] > when and tick["status"] != "STARTED"
        return tick if done else None

    return wait_for(f"a finished tick of {sensor}", finished, timeout, dev.log)


# The sensor daemon's loop: at least 5 s an iteration (`MIN_INTERVAL_LOOP_TIME`); an
# iteration that read a sensor as running before it was stopped may still start a tick.
DAEMON_LOOP_SECONDS = 5


@contextmanager
def sensor_paused(dev: DagsterDev, sensor: str) -> Iterator[None]:
    """`sensor` stopped and started again around the block, with the toggle of its page in
    the UI (the same two mutations). The block begins two daemon loops after the stop, once
    no tick is under way: an iteration that read the sensor as running before the stop
    may still start a tick, and one that did would see what the block does. That no tick
    started during the block is checked after it."""
    selector = {**repository_selector(), "sensorName": sensor}

    def state() -> dict[str, Any]:
        found = dev.graphql(SENSOR_STATE, selector=selector)["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        return dict(found["sensorState"])

    stopped = dev.graphql(STOP_SENSOR, id=state()["id"])["stopSensor"]
    assert stopped["__typename"] == "StopSensorMutationResult", stopped
    assert stopped["instigationState"]["status"] == "STOPPED", stopped
    settled = time.time() + 2 * DAEMON_LOOP_SECONDS

    def idle() -> bool:
        if time.time() < settled:
            return False
        ticks = state()["ticks"]
        return not ticks or ticks[0]["status"] != "STARTED"

    wait_for(f"{sensor}'s tick under way to finish", idle, 60, dev.log)
    began = time.time()
    try:
        yield
        ticks = state()["ticks"]
        assert not ticks or ticks[0]["timestamp"] < began, f"{sensor} ticked while stopped"
    finally:
        started = dev.graphql(START_SENSOR, selector=selector)["startSensor"]
        assert started["__typename"] == "Sensor", started
        assert started["sensorState"]["status"] == "RUNNING", started


def asset_selection(names: tuple[str, ...] = ASSETS) -> list[dict[str, list[str]]]:
    return [{"path": [name]} for name in names]


UI_TAGS = [{"key": "dagster/from_ui", "value": "true"}]


@dataclass
class PgDagsterHome:
    home: Path
    pg_url: str  # postgresql+psycopg2://, for dagster-postgres


def make_dagster_home(path: Path) -> tuple[PgDagsterHome, str]:
    """A DAGSTER_HOME holding the repository's dagster.yaml on a fresh PostgreSQL database;
    returns it and the database's URL (to drop it afterwards)."""
    url = create_pg_database("overnight_dagster")
    path.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "deploy" / "dagster.yaml", path / "dagster.yaml")
    pg = make_url(url).set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)
    return PgDagsterHome(path, pg), url


def stop_process_group(process: subprocess.Popen[bytes], grace: float = 5) -> None:
    """Stop a Dagster process started in a process group of its own, with its code servers
    and run workers: SIGINT to the group (SIGTERM does not stop `dagster dev` when a
    non-interactive shell started it), then SIGKILL after `grace` seconds. A clean exit takes
    10-25 s on a busy 2-core machine, most of it the code servers' shutdown, and nothing
    after a test looks at it."""
    try:
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=grace)
    except (subprocess.TimeoutExpired, ProcessLookupError):
        pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the group: children outlive their leader
    except ProcessLookupError:
        pass
    process.wait(timeout=10)


def start_dagster_dev(home: PgDagsterHome, env: dict[str, str], log: Path) -> Iterator[DagsterDev]:
    """`dagster dev` on `home` until the generator is closed (stop_process_group)."""
    port = free_port()
    env = {**env, "DAGSTER_HOME": str(home.home), "DAGSTER_PG_URL": home.pg_url}
    out = log.open("wb")
    process = subprocess.Popen(
        [str(BIN / "dagster"), "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", str(port)],
        cwd=REPO,
        env=env,
        stdout=out,
        stderr=subprocess.STDOUT,
        preexec_fn=lambda: (signal.signal(signal.SIGINT, signal.SIG_DFL), os.setsid()),
    )
    dev = DagsterDev(f"http://127.0.0.1:{port}", home.home, log, env, process)

    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"dagster dev exited\n{log.read_text(errors='replace')[-4000:]}")
        try:
            data = dev.graphql(
                "{ repositoriesOrError { __typename "
                "... on RepositoryConnection { nodes { name } } } }"
            )
        except (httpx.HTTPError, AssertionError):
            return False
        return bool(data["repositoriesOrError"].get("nodes"))

    try:
        wait_for("dagster dev to load the workspace", ready, 180, log)
        yield dev
    finally:
        stop_process_group(process)
        out.close()
