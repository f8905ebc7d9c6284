"""`overnight backfill`: run again, on purpose, the market-dates whose night was not right
(BEHAVIOUR §10; issue 22 item 7).

Each market-date of the range is judged by `core.readiness` from its `overnight_job_runs`
rows (one query), as `overnight status` and the readiness sensor judge it; those whose
state is asked for (`missing`, `failed`, `partial` = ready-partial, `late`) are launched,
newest dates first, through the Dagster instance of `DAGSTER_HOME` as the UI launches a
partition: one queued run of `overnight_job` per market-date with its partition tags, so
the instance's run queue (at most one run per market) and pools hold, and the daemon runs
them. A `partial` night is a successful Dagster run: Dagster's own "failed and missing"
backfill never offers it.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from overnight_pipeline.core.markets import Market
from overnight_pipeline.core.readiness import (
    FAILED,
    LATE,
    MISSING,
    READY_PARTIAL,
    Readiness,
    judge,
)
from overnight_pipeline.storage.job_runs import run_facts

ONLY = {"missing": MISSING, "failed": FAILED, "partial": READY_PARTIAL, "late": LATE}
"""`--only` words and the readiness states they select."""
WORKSPACE = Path(__file__).resolve().parents[1] / "workspace.yaml"
LOCATION = "overnight_pipeline.definitions"
TRIGGER_TAG = "overnight/trigger"


def parse_only(text: str) -> list[str]:
    """The states of `--only missing,failed,partial,late`; ValueError naming a bad word."""
    words = [w.strip() for w in text.split(",") if w.strip()]
    unknown = [w for w in words if w not in ONLY]
    if unknown or not words:
        raise ValueError(
            f"--only takes a comma list of {', '.join(ONLY)} (got {text!r})"
            + (f": {', '.join(unknown)} unknown" if unknown else "")
        )
    return [ONLY[w] for w in dict.fromkeys(words)]


def judge_range(
    conn: Connection,
    markets: Sequence[Market],
    first: date,
    last: date,
    *,
    now: datetime,
) -> list[Readiness]:
    """Every market-date of `first`..`last`, newest date first, markets in the given order,
    judged at `now` from their job-run rows (read in one statement)."""
    days = [last - timedelta(days=n) for n in range((last - first).days + 1)]
    facts = run_facts(conn, [(m.code, d) for d in days for m in markets])
    return [judge(m, d, facts.get((m.code, d), []), now) for d in days for m in markets]


def select(judged: Sequence[Readiness], states: Sequence[str]) -> list[Readiness]:
    """The market-dates whose state is one of `states` (sessions only: a day without a
    session is `no-session`, never selected), in the order given."""
    return [r for r in judged if r.state in states]


def describe(r: Readiness) -> str:
    """One line per market-date: market, date, state and what its runs say."""
    said = [
        r.detail,
        f"run {r.run_id}" if r.run_id else "",
        f"{r.users_failed} users failed" if r.users_failed else "",
    ]
    return f"{r.market:<6} {r.session.isoformat()}  {r.state:<13} {'; '.join(w for w in said if w)}"


@dataclass(frozen=True)
class Launched:
    market: str
    day: date
    run_id: str


@contextmanager
def _workspace(instance: Any) -> Iterator[Any]:
    """The code location of workspace.yaml, loaded as `dagster job launch -w` loads it, so
    the runs carry the origin the daemon's workspace resolves."""
    from dagster import __version__
    from dagster._cli.workspace.cli_target import WorkspaceOpts, get_workspace_from_cli_opts

    opts = WorkspaceOpts(workspace=(str(WORKSPACE),))
    # The code server's start and stop lines are noise here (and not JSON): warnings only.
    with get_workspace_from_cli_opts(
        instance, version=__version__, workspace_opts=opts, log_level="WARNING"
    ) as ws:
        yield ws


def launch(
    instance: Any, chosen: Sequence[Readiness], *, job_name: str, tags: Mapping[str, str]
) -> Iterator[Launched]:
    """Submit one run of `job_name` per market-date of `chosen`, in that order, to the
    instance's run coordinator (queued: the daemon launches them under the run queue);
    yields each as it is submitted."""
    from dagster._cli.job import _create_run  # what `dagster job launch` calls

    from overnight_pipeline.defs.partitions import PARTITIONS, partition_key

    with _workspace(instance) as workspace:
        location = workspace.get_code_location(LOCATION)
        (repo,) = location.get_repositories().values()
        remote_job = repo.get_full_job(job_name)
        for r in chosen:
            key = partition_key(r.market, r.session)
            run = _create_run(
                instance=instance,
                code_location=location,
                remote_repo=repo,
                remote_job=remote_job,
                run_config={},
                tags={**PARTITIONS.get_tags_for_partition_key(key), **tags},
                op_selection=None,
                run_id=None,
            )
            instance.submit_run(run.run_id, workspace)
            yield Launched(r.market, r.session, run.run_id)
