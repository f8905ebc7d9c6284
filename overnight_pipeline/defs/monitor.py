"""Dead run workers (BEHAVIOUR §7): a run whose worker process died (`kill -9`, the OOM killer)
stays `STARTED` in Dagster until run monitoring's maximum runtime (6 h), because the default
run launcher cannot check a worker's health (`supports_check_run_worker_health` is False in
Dagster 1.13). This module is that check for the runs we can see.

A run's worker is known from the engine event Dagster writes when the process starts
("Started process for run (pid: N)", with a `pid` metadata entry) or, for `overnight run`
(in-process, no launcher), from the `overnight/worker_pid` and `overnight/worker_host` tags
it sets. The worker is dead when that process no longer exists on this host, is a zombie,
or is a newer process that reused the pid (its start time is after the engine event).

Only workers on this host are judged: the default run launcher starts run workers as
children of the code server, which is also where sensors are evaluated; in-process runs are
judged by the host they name. Other launchers (dagster-k8s, dagster-celery-k8s, ECS) bring
their own worker health checks to Dagster's run monitoring.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultRunLauncher,
    RunsFilter,
)

WORKER_PID_TAG = "overnight/worker_pid"
WORKER_HOST_TAG = "overnight/worker_host"
STARTED_PROCESS = "Started process for run"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@dataclass(frozen=True)
class Worker:
    pid: int
    host: str | None
    started_at: float | None  # when the worker said it started (epoch seconds)


def worker_tags() -> dict[str, str]:
    """Tags an in-process run sets so that a later check can tell whether it still runs."""
    return {WORKER_PID_TAG: str(os.getpid()), WORKER_HOST_TAG: socket.gethostname()}


def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def process_alive(pid: int, *, started_by: float | None = None) -> bool:
    """Whether `pid` is a live (non-zombie) process on this host that started no later than
    `started_by` (epoch seconds; a later start means the pid was reused)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # cannot tell: never fail a run on a guess
    # The command name is in parentheses and may hold spaces: split after the last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields[0] in ("Z", "X"):
        return False
    boot = _boot_time()
    if started_by is not None and boot is not None:
        started = boot + int(fields[19]) / _CLOCK_TICKS
        if started > started_by + 2.0:  # start times have clock-tick resolution
            return False
    return True


def run_worker(instance: DagsterInstance, run: DagsterRun) -> Worker | None:
    """The worker process of `run` as far as the instance knows it (None: not yet known)."""
    if WORKER_PID_TAG in run.tags:
        record = instance.get_run_record_by_id(run.run_id)
        return Worker(
            int(run.tags[WORKER_PID_TAG]),
            run.tags.get(WORKER_HOST_TAG),
            record.start_time if record else None,
        )
    found = None
    for entry in instance.all_logs(run.run_id, of_type=DagsterEventType.ENGINE_EVENT):
        event = entry.dagster_event
        if event is None or not (event.message or "").startswith(STARTED_PROCESS):
            continue
        pid = event.engine_event_data.metadata.get("pid") if event.engine_event_data else None
        if pid is not None:
            found = Worker(int(str(pid.value)), None, entry.timestamp)
    return found


def dead_workers(
    instance: DagsterInstance, runs: list[DagsterRun]
) -> Iterator[tuple[DagsterRun, Worker]]:
    """The runs of `runs` still STARTED whose worker on this host is gone."""
    host = socket.gethostname()
    launcher_local = isinstance(instance.run_launcher, DefaultRunLauncher)
    for run in runs:
        if run.status != DagsterRunStatus.STARTED:
            continue
        worker = run_worker(instance, run)
        if worker is None:
            continue
        if worker.host is None and not launcher_local:
            continue  # launched elsewhere: that launcher's run monitoring judges it
        if worker.host is not None and worker.host != host:
            continue
        if not process_alive(worker.pid, started_by=worker.started_at):
            yield run, worker


def fail_dead_runs(instance: DagsterInstance, *, limit: int = 50) -> list[DagsterRun]:
    """Mark failed every STARTED run whose worker died; returns them as they are now."""
    started = [
        r.dagster_run
        for r in instance.get_run_records(
            RunsFilter(statuses=[DagsterRunStatus.STARTED]), limit=limit
        )
    ]
    failed = []
    for run, worker in list(dead_workers(instance, started)):
        where = f" on {worker.host}" if worker.host else ""
        instance.report_run_failed(
            run,
            f"The run worker (pid {worker.pid}{where}) is gone: killed or out of memory. "
            f"Re-execute it from failure: overnight reexecute {run.run_id}",
        )
        refreshed = instance.get_run_by_id(run.run_id)
        failed.append(refreshed or run)
    return failed
