"""Same-day recalculation latency under a real `dagster dev` (issue 23 item 5): from
`overnight load` committing a change to `GET /api/dashboard` serving the recalculated result.

    .venv/bin/python bench/recalc_latency_bench.py [--rounds 3] [--users 1000]
        [--sensor-interval S]  # default: the setting's default (30 s), not set in the env

Throwaway databases (the app's and the Dagster instance's, PostgreSQL) and a Redis prefix:
`--users` seeded users, plus 20 users of this bench (one file through `overnight load`: USD,
a contribution of about 1,000, five NYSE assets in one class) whose creation the night
covers (their `created` changes are marked processed). A real `dagster dev` (webserver,
daemon, code server; the repository's dagster.yaml on PostgreSQL; the sensors at
SENSOR_INTERVAL_SECONDS), one night of NYSE (`overnight run`, its newest session before
today) on its DAGSTER_HOME, and a real `overnight serve`. Each round: one `overnight load` of
a file raising the 20 users' contribution and selling one asset each, started (round - 1)
x interval / rounds after a tick of `user_changes_sensor` (the first right after one: about
the longest wait); every user's dashboard is then polled every 200 ms until
`totalInvestable` is the new contribution and the sold asset is gone.

Prints per round the latency over the 20 users (median, max) from the command's exit and
from the change's `changed_at` (taken by the loader before its writes: the commit is
between the two); the recalculation runs launched for the burst (Dagster's `runsOrError`
for `recalculation_job`, counted one sensor interval after the run finished) and the
`overnight_job_runs` rows of job type 'recalculation'; and where the time went: load exit ->
run created (the sensor's tick), created -> started (run queue, run worker start), the run,
and when the dashboard first served the result relative to the run's end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import secrets
import statistics
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
from sqlalchemy import Engine, func, select, update

from overnight_pipeline.core.markets import is_session, load_markets
from overnight_pipeline.defs.recalculation import RECALCULATION_JOB, SENSOR
from overnight_pipeline.seed import seed
from overnight_pipeline.settings import Settings
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.models import (
    assets_table,
    overnight_job_runs_table,
    user_changes_table,
)
from overnight_pipeline_tests.support.dagster_dev import (
    BIN,
    REPO,
    DagsterDev,
    free_port,
    make_dagster_home,
    start_dagster_dev,
    tick_after,
    wait_for,
)
from overnight_pipeline_tests.support.databases import (
    REDIS_URL,
    create_pg_database,
    drop_pg_database,
    redis_namespace,
)
from overnight_pipeline_tests.support.documents import one_class_user

MARKET = "NYSE"
CHANGED = 20
HELD = 5
POLL_SECONDS = 0.2
USERS = [uuid.UUID(f"00000000-0000-4000-8000-0000000be{n:03d}") for n in range(CHANGED)]
RUNS = """
query Runs($filter: RunsFilter) {
  runsOrError(filter: $filter) {
    __typename
    ... on Runs { results { runId status creationTime startTime endTime } }
    ... on PythonError { message }
  }
}"""


def last_session(today: date) -> date:
    market = load_markets()[MARKET]
    day = today - timedelta(days=1)
    while not is_session(market, day):
        day -= timedelta(days=1)
    return day


def contribution(round_no: int, n: int) -> str:
    """Round 0 is the night's; each round raises it (a different amount per user)."""
    return f"{1000 + 1000 * round_no + n}.00"


def write_file(path: Path, round_no: int, symbols: list[str]) -> Path:
    held = symbols[round_no:]  # round r has sold the first r of the five
    users = [
        one_class_user(u, market=MARKET, symbols=held, contribution=contribution(round_no, n))
        for n, u in enumerate(USERS)
    ]
    path.write_bytes(orjson.dumps({"assets": [], "users": users}))
    return path


def overnight(env: dict[str, str], *args: str, timeout: float = 600) -> str:
    done = subprocess.run(
        [str(BIN / "overnight"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"overnight {' '.join(args)}: exit {done.returncode}\n{done.stderr}")
    return done.stdout


@contextlib.contextmanager
def serve(env: dict[str, str], log: Path) -> Iterator[str]:
    """A real `overnight serve` on a free port until the block ends."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(BIN / "overnight"), "serve", "--port", str(port)],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"

        def ready() -> bool:
            if process.poll() is not None:
                raise SystemExit(f"overnight serve exited\n{log.read_text(errors='replace')}")
            try:
                return httpx.get(f"{url}/readyz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        try:
            wait_for("overnight serve", ready, 30, log)
            yield url
        finally:
            process.terminate()
            process.wait(timeout=20)


def served(client: httpx.Client, url: str, token: str) -> tuple[Decimal, set[str]]:
    response = client.get(
        f"{url}/api/dashboard", headers={"Authorization": f"Bearer {token}"}, timeout=5
    )
    response.raise_for_status()
    data = response.json()["data"]
    return Decimal(data["totalInvestable"]), {r["symbol"] for r in data["recommendations"]}


def recalculation_runs(dev: DagsterDev, since: float) -> list[dict[str, Any]]:
    found = dev.graphql(RUNS, filter={"pipelineName": RECALCULATION_JOB, "createdAfter": since})
    runs = found["runsOrError"]
    assert runs["__typename"] == "Runs", runs
    return sorted(runs["results"], key=lambda r: r["creationTime"])


def job_rows(engine: Engine, since: datetime) -> list[Any]:
    j = overnight_job_runs_table.c
    with engine.connect() as conn:
        return list(
            conn.execute(
                select(j.run_id, j.status, j.users_processed, j.metrics).where(
                    j.job_type == "recalculation", j.started_at >= since
                )
            ).all()
        )


@dataclass
class Round:
    number: int
    latencies: list[float]  # from the load command's exit
    recorded: list[float]  # from its changed_at, taken before its writes and commit
    runs: list[dict[str, Any]]
    rows: list[Any]
    load_exit: float  # epoch seconds
    load_seconds: float
    after_tick: float  # the load's exit, seconds after the sensor's previous tick

    def line(self, interval: int) -> str:
        lat, rec = self.latencies, self.recorded
        run = self.runs[0] if self.runs else {}
        created = run.get("creationTime", self.load_exit) - self.load_exit
        start = (run.get("startTime") or 0) - run.get("creationTime", 0)
        took = (run.get("endTime") or 0) - (run.get("startTime") or 0)
        served_after = min(lat) - ((run.get("endTime") or self.load_exit) - self.load_exit)
        rows = ", ".join(f"{r.status} {r.users_processed} users" for r in self.rows)
        seconds = self.rows[0].metrics.get("seconds") if self.rows else None
        return (
            f"round {self.number}: load {self.load_seconds:.1f} s, its exit"
            f" {self.after_tick:.1f} s after a tick (interval {interval} s)\n"
            f"  served to {len(lat)} users after: from the exit median"
            f" {statistics.median(lat):.1f} s, max {max(lat):.1f} s; from changed_at median"
            f" {statistics.median(rec):.1f} s, max {max(rec):.1f} s\n"
            f"  {len(self.runs)} recalculation run(s) for the burst"
            f" ({', '.join(r['status'] for r in self.runs)}); {len(self.rows)} job-run row(s)"
            f" 'recalculation' ({rows})\n"
            f"  load exit -> run created {created:.1f} s, created -> started {start:.1f} s,"
            f" run {took:.1f} s (the recalculation itself {seconds} s), first served"
            f" {served_after:+.1f} s from the run's end"
        )


def one_round(
    number: int,
    *,
    dev: DagsterDev,
    env: dict[str, str],
    engine: Engine,
    url: str,
    tokens: dict[uuid.UUID, str],
    symbols: list[str],
    work: Path,
    interval: int,
    offset: float,
) -> Round:
    path = write_file(work / f"round-{number}.json", number, symbols)
    sold = symbols[number - 1]
    wanted = {u: Decimal(contribution(number, n)) for n, u in enumerate(USERS)}
    with httpx.Client() as client:
        for user, token in tokens.items():  # the precondition: last result still served
            total, held = served(client, url, token)
            assert total != wanted[user] and sold in held, (user, total, held)
        # The load starts `offset` s after a tick: the rounds spread over the interval, the
        # first right after a tick (about the longest wait for the next one).
        tick = tick_after(dev, SENSOR, time.time(), timeout=interval + 60)
        time.sleep(max(0.0, tick["timestamp"] + offset - time.time()))
        since_wall = time.time()
        since = datetime.now(UTC)
        started = time.monotonic()
        out = overnight(env, "load", str(path))
        committed = time.monotonic()
        load_exit = time.time()
        assert f"{CHANGED} user(s) changed" in out, out
        latencies: dict[uuid.UUID, float] = {}
        seen: dict[uuid.UUID, float] = {}
        deadline = committed + 10 * interval + 120
        while len(latencies) < CHANGED:
            now = time.monotonic()
            if now > deadline:
                raise SystemExit(
                    f"round {number}: {CHANGED - len(latencies)} users still not served after"
                    f" {now - committed:.0f} s; dagster dev log: {dev.log}"
                )
            for user, token in tokens.items():
                if user in latencies:
                    continue
                total, held = served(client, url, token)
                if total == wanted[user] and sold not in held:
                    latencies[user] = time.monotonic() - committed
                    seen[user] = time.time()
            time.sleep(max(0.0, POLL_SECONDS - (time.monotonic() - now)))

    def finished() -> list[dict[str, Any]] | None:
        runs = recalculation_runs(dev, since_wall)
        done = runs and all(r["endTime"] for r in runs)
        return runs if done else None

    wait_for("the recalculation run to finish", finished, 300, dev.log)
    c = user_changes_table.c
    with engine.connect() as conn:
        recorded = conn.scalar(select(func.max(c.changed_at)).where(c.user_id.in_(USERS)))
    assert recorded is not None
    # A second run for the same burst would be launched by a later tick: give it one.
    time.sleep(interval + 6)
    return Round(
        number,
        [latencies[u] for u in USERS],
        [seen[u] - recorded.timestamp() for u in USERS],
        recalculation_runs(dev, since_wall),
        job_rows(engine, since),
        load_exit,
        committed - started,
        load_exit - tick["timestamp"],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3, choices=range(1, HELD))
    parser.add_argument("--users", type=int, default=1000, help="seeded users beside the 20")
    parser.add_argument("--sensor-interval", type=int, help="SENSOR_INTERVAL_SECONDS (unset)")
    args = parser.parse_args()
    default = Settings.model_fields["sensor_interval_seconds"].default
    interval = args.sensor_interval or int(default)
    day = last_session(datetime.now(UTC).date())
    cpus = os.cpu_count()
    print(
        f"{MARKET} night of {day}, {args.users} seeded users + {CHANGED} changed per round,"
        f" sensor interval {interval} s"
        f" ({'SENSOR_INTERVAL_SECONDS' if args.sensor_interval else 'default'}), {cpus} CPUs",
        flush=True,
    )
    app_db = create_pg_database("overnight_bench_recalc")
    home_db: str | None = None
    prefixes = contextlib.contextmanager(redis_namespace)("bench-recalc")
    try:
        with tempfile.TemporaryDirectory() as tmp, prefixes as prefix:
            work = Path(tmp)
            migrate(app_db)
            engine = make_engine(app_db)
            with engine.begin() as conn:
                seed(conn, users=args.users, seed=23, as_of=day)
                symbols = list(
                    conn.scalars(
                        select(assets_table.c.symbol)
                        .where(assets_table.c.market == MARKET)
                        .order_by(assets_table.c.symbol)
                        .limit(HELD)
                    )
                )
            home, home_db = make_dagster_home(work / "dagster-home")
            env = {
                k: v
                for k, v in os.environ.items()
                if not k.startswith(("OTEL_", "DAGSTER_")) and k != "SENSOR_INTERVAL_SECONDS"
            }
            env.update(
                {
                    "DATABASE_URL": app_db,
                    "REDIS_URL": REDIS_URL,
                    "CACHE_PREFIX": prefix,
                    "DASHBOARD_SECRET": secrets.token_hex(32),
                    "PYTHONUNBUFFERED": "1",
                }
            )
            if args.sensor_interval:
                env["SENSOR_INTERVAL_SECONDS"] = str(args.sensor_interval)
            overnight(env, "load", str(write_file(work / "night.json", 0, symbols)))
            with engine.begin() as conn:  # the night computes the users it created
                conn.execute(
                    update(user_changes_table)
                    .where(user_changes_table.c.processed_at.is_(None))
                    .values(processed_at=func.now())
                )
            dev_start = time.monotonic()
            dagster_dev = contextlib.contextmanager(start_dagster_dev)
            rounds: list[Round] = []
            with dagster_dev(home, env, work / "dagster-dev.log") as dev:
                print(f"dagster dev ready in {time.monotonic() - dev_start:.1f} s", flush=True)
                night = time.monotonic()
                overnight(dev.env, "run", "--market", MARKET, "--date", str(day))
                print(f"night of {MARKET} {day}: {time.monotonic() - night:.1f} s", flush=True)
                with ThreadPoolExecutor(4) as pool:
                    tokens = dict(
                        zip(
                            USERS,
                            pool.map(lambda u: overnight(env, "token", str(u)).strip(), USERS),
                            strict=True,
                        )
                    )
                with serve(env, work / "serve.log") as url:
                    for number in range(1, args.rounds + 1):
                        found = one_round(
                            number,
                            dev=dev,
                            env=env,
                            engine=engine,
                            url=url,
                            tokens=tokens,
                            symbols=symbols,
                            work=work,
                            interval=interval,
                            offset=(number - 1) * interval / args.rounds,
                        )
                        rounds.append(found)
                        print(found.line(interval), flush=True)
            engine.dispose()
            every = [s for r in rounds for s in r.latencies]
            recorded = [s for r in rounds for s in r.recorded]
            print(
                f"all {len(rounds)} rounds ({len(every)} user-changes): from the load's exit"
                f" median {statistics.median(every):.1f} s, max {max(every):.1f} s; from"
                f" changed_at median {statistics.median(recorded):.1f} s,"
                f" max {max(recorded):.1f} s;"
                f" runs per burst: {[len(r.runs) for r in rounds]}"
            )
    finally:
        drop_pg_database(app_db)
        if home_db:
            drop_pg_database(home_db)


if __name__ == "__main__":
    main()
