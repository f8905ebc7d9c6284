"""The overnight steps of one market-date partition, free of Dagster.

Each Dagster asset of `defs/` calls one of these and turns its `StepReport` into
materialization metadata; the CLI, the tests and the benchmarks can call them directly.
Users are processed in batches of `batch_size`; each batch is one transaction, and a step
that is retried or re-executed under the same correlation id skips the users whose events
are already there, so nothing is duplicated (BEHAVIOUR §4, §7).
"""

from __future__ import annotations

import hashlib
import logging
import random
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any, TypeVar

import orjson
import pandas as pd
import redis
from sqlalchemy import Connection, Engine

from overnight_pipeline.core.batch import Batch, recommend_batch, score_batch
from overnight_pipeline.core.captured import (
    batch_from_captured,
    capture_json,
    criteria_snapshots,
    market_snapshot,
    snapshot_hash,
    snapshot_keys,
)
from overnight_pipeline.core.markets import Market
from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.payloads import cache_payloads
from overnight_pipeline.core.recommendations import UserRecommendations
from overnight_pipeline.core.scored import (
    ScoresPayloadError,
    no_scores,
    payload_format,
    same_document,
    score_json,
)
from overnight_pipeline.logs import correlation, mask_user
from overnight_pipeline.providers.base import Instrument, MarketDataProvider
from overnight_pipeline.storage.batches import (
    LoadedBatch,
    ensure_statistics,
    load_batch,
    load_market_snapshot,
    load_rates,
    partition_currencies,
    partition_instruments,
    partition_users,
    snapshot_reads,
)
from overnight_pipeline.storage.bulk import write_rows
from overnight_pipeline.storage.cache import write_entries
from overnight_pipeline.storage.cache_entries import CacheEntry
from overnight_pipeline.storage.events import (
    event_payloads,
    event_rows,
    insert_snapshot,
    insert_snapshots,
    snapshots,
    users_with_event,
)
from overnight_pipeline.storage.market_data import (
    store_fundamentals,
    store_prices,
    store_rates,
)
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.results import (
    ScoreRow,
    asset_score_rows,
    calculation_asset_rows,
    recommendations_for,
    replace_scores,
    scores_of,
    upsert_recommendations,
    users_with_recommendation,
)

_log = logging.getLogger(__name__)
JOB_STARTED = "Overnight job started"
BATCH_PROCESSED = "User batch processed"
USER_FAILED = "User processing failed"
FAILED_USERS_LOGGED = 100
"""Failed users logged one by one per shard step; the rest are counted in one line (every
failure is in the step's metadata and the user's failed `CALC_COMPLETED`)."""

STARTED, CAPTURED, SCORED, COMPLETED = (
    "CALC_STARTED",
    "INPUTS_CAPTURED",
    "SCORES_COMPUTED",
    "CALC_COMPLETED",
)


@dataclass
class StepReport:
    """What a step did, for the asset's metadata and the run's summary."""

    metrics: dict[str, Any] = field(default_factory=dict)
    failures: list[dict[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def markdown(self) -> str:
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.metrics.items() if v is not None)
        text = f"| measure | value |\n| --- | --- |\n{rows}\n| seconds | {self.seconds:.2f} |"
        if self.failures:
            text += "\n\n| user | stage | error |\n| --- | --- | --- |\n" + "\n".join(
                f"| {f['user']} | {f['stage']} | {f['error'][:200]} |" for f in self.failures[:20]
            )
        return text


def _chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


Write = Callable[[Connection], None]


class _BatchWriter:
    """Writes each batch in its own transaction on a background thread, so the database
    ingests earlier batches while this process computes the next one. Up to `in_flight`
    writes run at once, each on its own connection: PostgreSQL then spends the part of a
    core this process leaves idle (one writer kept PostgreSQL's core busy while the
    computing thread waited for it half of the time). Memory stays bounded by
    `in_flight + 1` batches. A failed write surfaces at a later `submit` or at `close`,
    and the step fails (and is retried) as a whole; batches may commit out of order, which
    the per-user resume does not mind."""

    def __init__(self, engine: Engine, *, in_flight: int = 2) -> None:
        self._engine = engine
        self._in_flight = in_flight
        self._pool = ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="batch-writer")
        self._pending: deque[Future[None]] = deque()

    def _run(self, write: Write) -> None:
        with self._engine.begin() as conn:
            write(conn)

    def submit(self, write: Write) -> None:
        for done in [f for f in self._pending if f.done()]:
            self._pending.remove(done)
            done.result()
        while len(self._pending) >= self._in_flight:
            self._pending.popleft().result()
        self._pending.append(self._pool.submit(self._run, write))

    def wait(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def __enter__(self) -> _BatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                self.wait()
        finally:
            self._pool.shutdown(wait=True)


L = TypeVar("L")


def _prefetched(
    chunks: Sequence[Sequence[uuid.UUID]], load: Callable[[Sequence[uuid.UUID]], L]
) -> Iterator[tuple[Sequence[uuid.UUID], L]]:
    """(chunk, load(chunk)) in order, loading the next chunk on a reader thread (its own
    connection) while the caller computes this one: the database answers the next batch's
    queries on its core while this process computes on the other."""
    if not chunks:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="batch-reader") as pool:
        pending = pool.submit(load, chunks[0])
        for i, chunk in enumerate(chunks):
            loaded = pending.result()
            if i + 1 < len(chunks):
                pending = pool.submit(load, chunks[i + 1])
            yield chunk, loaded


# Market data -----------------------------------------------------------------------------


def fetch_rates(
    engine: Engine,
    provider: MarketDataProvider,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
) -> StepReport:
    """One USD-quoted snapshot for every currency the partition's users need."""
    started = time.perf_counter()
    with engine.connect() as conn:
        users = partition_users(conn, market=market, day=day, markets=markets)
        currencies = partition_currencies(conn, users) | {markets[market].currency}
    result = provider.fetch_rates(sorted(currencies - {"USD"}), day=day)
    with engine.begin() as conn:
        stored = store_rates(conn, result, day=day)
    return StepReport(
        metrics={
            "users": len(users),
            "currencies": len(currencies),
            "stored": stored,
            "source": result.source,
            "stale": result.stale,
            "stale_currencies": ", ".join(sorted(result.stale_currencies)) or "-",
            "stale_age_hours": None
            if result.age is None
            else round(result.age.total_seconds() / 3600, 1),
            "missing": ", ".join(result.missing) or "-",
        },
        seconds=time.perf_counter() - started,
    )


def _instruments(
    engine: Engine, *, market: str, day: date, markets: Mapping[str, Market]
) -> tuple[int, dict[Instrument, uuid.UUID]]:
    with engine.connect() as conn:
        users = partition_users(conn, market=market, day=day, markets=markets)
        found = partition_instruments(conn, users)
    return len(users), {inst: asset_id for inst, (asset_id, _) in found.items()}


def _fetch_held(
    engine: Engine,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    stage: str,
    fetch: Callable[..., Any],
    store_result: Callable[..., int],
    found: str,
) -> StepReport:
    """Fetch something for every distinct asset the partition's users hold (never per
    user) and store the fresh part of it under `day`."""
    started = time.perf_counter()
    users, ids = _instruments(engine, market=market, day=day, markets=markets)
    result = fetch(sorted(ids), day=day)
    with engine.begin() as conn:
        stored = store_result(conn, result, day=day, asset_ids=ids)
    items = result.quotes if stage == "prices" else result.values
    stale = (
        len(result.stale_instruments)
        if result.stale_instruments
        else (len(items) if result.stale else 0)
    )
    return StepReport(
        metrics={
            "users": users,
            "assets": len(ids),
            found: len(items),
            "stored": stored,
            "stale": stale,
            "missing": len(result.missing),
            "source": result.source,
        },
        failures=[{"user": "-", "stage": stage, "error": e} for e in result.errors[:20]],
        seconds=time.perf_counter() - started,
    )


def fetch_prices(
    engine: Engine,
    provider: MarketDataProvider,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
) -> StepReport:
    """A price for every distinct asset the partition's users hold."""
    return _fetch_held(
        engine,
        market=market,
        day=day,
        markets=markets,
        stage="prices",
        fetch=provider.fetch_prices,
        store_result=store_prices,
        found="priced",
    )


def fetch_fundamentals(
    engine: Engine,
    provider: MarketDataProvider,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
) -> StepReport:
    """Fundamentals for every distinct asset the partition's users hold."""
    return _fetch_held(
        engine,
        market=market,
        day=day,
        markets=markets,
        stage="fundamentals",
        fetch=provider.fetch_fundamentals,
        store_result=store_fundamentals,
        found="fetched",
    )


# Scores ---------------------------------------------------------------------------------


def _subset(batch: Batch, users: set[str]) -> Batch:
    def keep(frame: pd.DataFrame) -> pd.DataFrame:
        return frame[frame["user_id"].isin(users)].reset_index(drop=True)

    return Batch(
        keep(batch.users),
        keep(batch.classes),
        keep(batch.holdings),
        keep(batch.rules),
        batch.fundamentals,
    )


def _rate_failures(batch: Batch, fx: FxRates) -> dict[str, str]:
    """Users who cannot be valued: a priced holding or the base has no rate."""
    base = dict(zip(batch.users["user_id"], batch.users["base_currency"], strict=True))
    failed: dict[str, str] = {}
    pairs: dict[tuple[str, str], str | None] = {}
    h = batch.holdings
    for uid, currency, price in zip(h["user_id"], h["currency"], h["price"], strict=True):
        if price is None or uid in failed:
            continue
        pair = (currency, base[uid])
        if pair not in pairs:
            try:
                fx.rate(*pair)
                pairs[pair] = None
            except MissingRateError as exc:
                pairs[pair] = str(exc)
        if pairs[pair]:
            failed[uid] = pairs[pair] or ""
    return failed


def shard_of(user_id: uuid.UUID, shards: int) -> int:
    """The shard (0..shards-1) of a user: a stable hash of the id, the same in every process
    and on every machine, so a shard re-executed elsewhere selects the same users."""
    digest = hashlib.blake2b(user_id.bytes, digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def score_and_recommend(
    engine: Engine,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID,
    calculated_at: datetime,
    run_id: str,
    batch_size: int = 1000,
    shard: int = 0,
    shards: int = 1,
    log: logging.Logger | None = None,
    only: Sequence[uuid.UUID] | None = None,
) -> StepReport:
    """Scores, recommendations and the four events of every user of one shard of the
    partition (or of the users `only`, priced from their own assets: a same-day
    recalculation, `recalculate`), in one pass per batch: each batch is loaded once, scored, recommended and
    written in one transaction, so a retried or re-executed shard resumes after its last
    committed batch (users with `CALC_COMPLETED` are skipped). A user whose inputs cannot
    be valued gets `CALC_STARTED` and a failed `CALC_COMPLETED` instead.

    `calculated_at` (the root run's creation time, like the correlation id the same for
    retries and re-executions) stamps every row of the calculation and chooses its monthly
    partition, created here if it is missing.

    `log` (the step's Dagster log; default this module's logger) gets "Overnight job
    started", one "User batch processed" progress line per batch and "User processing
    failed" per failed user (masked id), each with its fields as `extra`."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard: {shard} is not in 0..{shards - 1}")
    with correlation(correlation_id):
        return _score_and_recommend(
            engine,
            market=market,
            day=day,
            markets=markets,
            correlation_id=correlation_id,
            calculated_at=calculated_at,
            run_id=run_id,
            batch_size=batch_size,
            shard=shard,
            shards=shards,
            log=log or _log,
            only=only,
        )


def _score_and_recommend(
    engine: Engine,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID,
    calculated_at: datetime,
    run_id: str,
    batch_size: int,
    shard: int,
    shards: int,
    log: logging.Logger,
    only: Sequence[uuid.UUID] | None = None,
) -> StepReport:
    started = time.perf_counter()
    with engine.begin() as conn:
        ensure_months(conn, [calculated_at])
    with engine.begin() as conn:
        analyzed = ensure_statistics(conn)
    with engine.connect() as conn:
        everyone = (
            sorted(set(only))
            if only is not None
            else partition_users(conn, market=market, day=day, markets=markets)
        )
        users = [u for u in everyone if shard_of(u, shards) == shard] if shards > 1 else everyone
        done = users_with_event(conn, correlation_id=correlation_id, event_type=COMPLETED)
        fx = load_rates(conn, day=day)
        # Every shard prices from the market data of the whole partition's assets: one
        # snapshot, the same hash in every shard, whatever the shard count.
        held = partition_instruments(conn, everyone)
        snapshot = load_market_snapshot(conn, [i for i, _ in held.values()], day=day)
    snapshot_key, snapshot_payload = market_snapshot(
        [(str(aid), m, sym, cur) for (m, sym), (aid, cur) in held.items()],
        snapshot.prices,
        snapshot.fundamentals,
        fx,
    )
    # Committed before the first event that references it.
    with engine.begin() as conn:
        insert_snapshot(
            conn,
            key=snapshot_key,
            kind="market",
            payload=snapshot_payload,
            calculated_at=calculated_at,
        )
    todo = [u for u in users if u not in done]
    report = StepReport(
        metrics={
            "users_total": len(users),
            "users_resumed": len(users) - len(todo),
            "users_succeeded": 0,
            "users_failed": 0,
            "assets_scored": 0,
            "recommendations_generated": 0,
            "unallocated_users": 0,
            "rates_stale": fx.stale,
            "stale_prices": snapshot.stale_prices,
            "tables_analyzed": ", ".join(analyzed) or "-",
        }
    )

    def load(chunk: Sequence[uuid.UUID]) -> LoadedBatch:
        # One snapshot per batch: a concurrent `overnight load` never tears a user's inputs.
        with snapshot_reads(engine) as conn:
            return load_batch(conn, chunk, snapshot=snapshot)

    chunks = _chunks(todo, batch_size)
    progress = _Progress(
        log,
        market=market,
        day=day,
        correlation_id=correlation_id,
        run_id=run_id,
        shard=shard,
        shards=shards,
        users=len(todo),
        batches=len(chunks),
    )
    progress.started(users=len(users), resumed=len(users) - len(todo), batch_size=batch_size)
    with _BatchWriter(engine) as writer:
        for chunk, loaded in _prefetched(chunks, load):
            failures_before = len(report.failures)
            writer.submit(
                _process_batch(
                    loaded,
                    chunk,
                    report,
                    dialect=engine.dialect.name,
                    fx=fx,
                    market=market,
                    day=day,
                    correlation_id=correlation_id,
                    calculated_at=calculated_at,
                    run_id=run_id,
                    snapshot=snapshot_key,
                )
            )
            progress.batch(len(chunk), report.failures[failures_before:])
    report.seconds = time.perf_counter() - started
    return report


def _about(seconds: float) -> str:
    """A duration as a person reads it: 0.4 s, 12 s, 3 min 20 s, 1 h 05 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class _Progress:
    """The log lines of one shard step (BEHAVIOUR §9 Progress):
    "Overnight job started", then per batch "User batch processed" with batch n of N, users,
    failed, seconds, users/s (the batch's) and the estimated time left (at the step's
    average rate so far), and "User processing failed" per failed user, id masked."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        market: str,
        day: date,
        correlation_id: uuid.UUID,
        run_id: str,
        shard: int,
        shards: int,
        users: int,
        batches: int,
    ) -> None:
        self._log = log
        self._where = f"{market} {day.isoformat()}, shard {shard + 1} of {shards}"
        self._common: dict[str, Any] = {
            "correlationId": str(correlation_id),
            "runId": run_id,
            "market": market,
            "marketDate": day.isoformat(),
            "shard": shard + 1,
            "shards": shards,
        }
        self._users = users
        self._batches = batches
        self._done = 0
        self._number = 0
        self._failed_logged = 0
        self._began = self._last = time.perf_counter()

    def _emit(self, level: int, message: str, event: str, **fields: Any) -> None:
        self._log.log(level, message, extra={"event": event, **self._common, **fields})

    def started(self, *, users: int, resumed: int, batch_size: int) -> None:
        self._emit(
            logging.INFO,
            f"{JOB_STARTED}: {self._where}: {users} users ({resumed} already done), "
            f"{self._batches} batches of up to {batch_size}",
            JOB_STARTED,
            jobType="scoring",
            targetMarkets=[self._common["market"]],
            userCount=users,
            usersResumed=resumed,
            batchCount=self._batches,
            batchSize=batch_size,
        )
        self._began = self._last = time.perf_counter()

    def batch(self, users: int, failures: Sequence[Mapping[str, str]]) -> None:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._number += 1
        self._done += users
        rate = users / seconds if seconds > 0 else 0.0
        average = self._done / (now - self._began) if now > self._began else 0.0
        left = (self._users - self._done) / average if average > 0 else 0.0
        for failure in failures:
            self._failed(failure)
        self._emit(
            logging.INFO,
            f"{BATCH_PROCESSED}: batch {self._number} of {self._batches} ({self._where}): "
            f"{users} users, {len(failures)} failed, {seconds:.2f} s, {rate:,.1f} users/s, "
            f"about {_about(left)} left",
            BATCH_PROCESSED,
            batchNumber=self._number,
            batchCount=self._batches,
            usersProcessed=users,
            usersFailed=len(failures),
            duration=round(seconds * 1000),
            seconds=round(seconds, 3),
            usersPerSecond=round(rate, 1),
            usersDone=self._done,
            usersTotal=self._users,
            etaSeconds=round(left, 1),
        )

    def _failed(self, failure: Mapping[str, str]) -> None:
        self._failed_logged += 1
        if self._failed_logged > FAILED_USERS_LOGGED:
            if self._failed_logged == FAILED_USERS_LOGGED + 1:
                self._emit(
                    logging.ERROR,
                    f"{USER_FAILED}: more than {FAILED_USERS_LOGGED} users failed "
                    f"({self._where}); the others are in the step's metadata",
                    USER_FAILED,
                    batchNumber=self._number,
                )
            return
        user = mask_user(failure["user"])
        self._emit(
            logging.ERROR,
            f"{USER_FAILED}: user {user} at {failure['stage']}: {failure['error'][:300]}",
            USER_FAILED,
            userId=user,
            stage=failure["stage"],
            error=failure["error"][:1000],
            batchNumber=self._number,
        )


def _process_batch(
    loaded: LoadedBatch,
    chunk: Sequence[uuid.UUID],
    report: StepReport,
    *,
    dialect: str,
    fx: FxRates,
    market: str,
    day: date,
    correlation_id: uuid.UUID,
    calculated_at: datetime,
    run_id: str,
    snapshot: str,
) -> Write:
    """Compute one loaded batch (scores, recommendations, events); returns the writes of its
    results (one transaction)."""
    now = datetime.now(UTC)
    failed = _rate_failures(loaded.batch, fx)
    ok = {str(u) for u in chunk} - set(failed)
    batch, holding_markets = loaded.batch, loaded.holding_markets
    if failed:
        batch = _subset(loaded.batch, ok)
        holding_markets = [
            m
            for m, uid in zip(loaded.holding_markets, loaded.batch.holdings["user_id"], strict=True)
            if uid in ok
        ]
    versions = loaded.criteria_versions
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recommended, rec_failures = recommend_batch(batch, scored, fx)
    texts = score_json(scored, versions)
    criteria = criteria_snapshots(batch)
    captured = capture_json(
        batch,
        fx,
        market=market,
        market_date=day,
        criteria_versions=versions,
        holding_markets=holding_markets,
        snapshot=snapshot,
        criteria={uid: key for uid, (key, _) in criteria.items()},
    )
    criteria_payloads = dict(criteria.values())
    score_rows: list[ScoreRow] = []
    asset_rows: list[tuple[str, str, str]] = []
    for uid, aid, asset_market, value, top, summary in zip(
        scored.holdings["user_id"].tolist(),
        scored.holdings["asset_id"].tolist(),
        holding_markets,
        texts.score,
        texts.max_possible_score,
        texts.summary,
        strict=True,
    ):
        # The per-rule breakdown is in SCORES_COMPUTED (the audit trail); the table keeps
        # the summary the dashboard and SQL users read.
        score_rows.append((uid, aid, asset_market, value, top, versions.get(uid) or 0, summary))
        asset_rows.append((aid, uid, value))
    holdings_count = batch.holdings.groupby("user_id").size().to_dict()
    day_text = day.isoformat()
    events: list[tuple[uuid.UUID, Any, str, Any]] = []
    rec_rows: list[dict[str, Any]] = []
    for uid in sorted(ok):
        version = versions.get(uid)
        document, holdings = captured[uid]
        started = {
            "market": market,
            "marketDate": day_text,
            "runId": run_id,
            "criteriaVersion": version,
            "holdings": holdings,
        }
        events.append((correlation_id, uid, STARTED, started))
        events.append((correlation_id, uid, CAPTURED, document))
        scores_doc: Any = texts.payloads.get(uid) or no_scores(version)
        events.append((correlation_id, uid, SCORED, scores_doc))
        rec = recommended.get(uid)
        if rec is None:
            error = str(rec_failures.get(uid, "no result"))
            events.append(
                (correlation_id, uid, COMPLETED, _failed(market, day, "recommendations", error))
            )
            report.failures.append({"user": uid, "stage": "recommendations", "error": error})
            continue
        recs, portfolio = cache_payloads(
            uuid.UUID(uid), rec, generated_at=now, asset_count=int(holdings_count.get(uid, 0))
        )
        rec_rows.append(
            {
                "user_id": uuid.UUID(uid),
                "market_date": day,
                "market": market,
                "correlation_id": correlation_id,
                "generated_at": now,
                "base_currency": rec.base_currency,
                "total_investable": rec.contribution,
                "criteria_version": rec.criteria_version,
                "payload": recs.model_dump(mode="json", by_alias=True),
                "portfolio": portfolio.model_dump(mode="json", by_alias=True),
            }
        )
        events.append((correlation_id, uid, COMPLETED, _completed(rec, market, day)))
        report.metrics["recommendations_generated"] += len(rec.recommendations)
        report.metrics["unallocated_users"] += rec.unallocated > 0
    for uid, error in sorted(failed.items()):
        started = {
            "market": market,
            "marketDate": day_text,
            "runId": run_id,
            "criteriaVersion": versions.get(uid),
        }
        events.append((correlation_id, uid, STARTED, started))
        events.append((correlation_id, uid, COMPLETED, _failed(market, day, "inputs", error)))
        report.failures.append({"user": uid, "stage": "inputs", "error": error})
    report.metrics["users_succeeded"] += len(rec_rows)
    report.metrics["users_failed"] += len(chunk) - len(rec_rows)
    report.metrics["assets_scored"] += len(score_rows)
    ok_ids = [uuid.UUID(u) for u in ok]
    # Formatted here, not on the writer thread: this thread would otherwise wait for it.
    scores = asset_score_rows(
        dialect, score_rows, day=day, correlation_id=correlation_id, computed_at=now
    )
    rows = [
        calculation_asset_rows(
            dialect, asset_rows, correlation_id=correlation_id, calculated_at=calculated_at
        ),
        event_rows(dialect, events, at=now, calculated_at=calculated_at),
    ]

    def write(conn: Connection) -> None:
        # Before the events that reference them, in their transaction.
        insert_snapshots(
            conn, kind="criteria", payloads=criteria_payloads, calculated_at=calculated_at
        )
        replace_scores(conn, scores, user_ids=ok_ids, day=day)
        for prepared in rows:
            write_rows(conn, prepared)
        upsert_recommendations(conn, rec_rows)

    return write


def _failed(market: str, day: date, stage: str, error: str) -> dict[str, Any]:
    """The failed `CALC_COMPLETED` payload of a user."""
    return {
        "status": "failed",
        "stage": stage,
        "error": error,
        "market": market,
        "marketDate": day.isoformat(),
    }


def _completed(rec: UserRecommendations, market: str, day: date) -> dict[str, Any]:
    """The `CALC_COMPLETED` payload of a user's successful calculation."""
    return {
        "status": "completed",
        "market": market,
        "marketDate": day.isoformat(),
        "recommendations": len(rec.recommendations),
        "allocated": format(rec.allocated, "f"),
        "unallocated": format(rec.unallocated, "f"),
        "contribution": format(rec.contribution, "f"),
        "baseCurrency": rec.base_currency,
        "missingPrices": list(rec.missing_prices),
        "classes": {c.name: c.status for c in rec.classes if c.status},
    }


# Replay ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplayOutcome:
    """What replaying a sample of a calculation's users from their events found."""

    users: int  # users with a recommendation row under the calculation
    checked: list[str]
    mismatches: list[dict[str, str]]  # user, what differs


def replay_sample(
    engine: Engine, *, correlation_id: uuid.UUID, day: date, sample_size: int = 25
) -> ReplayOutcome:
    """Recompute a sample of the calculation's users from their `INPUTS_CAPTURED` (and the
    snapshot it references, whose content must still hash to its key) and compare with
    what the run stored: the `SCORES_COMPUTED` payload, the `asset_scores` rows while they
    are the calculation's (a later calculation of the user replaces them) and the
    persisted recommendation row (both documents, to the cent). The sample is drawn by the
    correlation id, so re-evaluating a calculation checks the same users."""
    with engine.connect() as conn:
        users = sorted(users_with_recommendation(conn, correlation_id=correlation_id, day=day))
        chosen = sorted(
            random.Random(correlation_id.int).sample(users, min(sample_size, len(users)))
        )
        ids = [uuid.UUID(u) for u in chosen]
        captured = event_payloads(
            conn, correlation_id=correlation_id, event_type=CAPTURED, user_ids=ids
        )
        scored = dict(
            event_payloads(conn, correlation_id=correlation_id, event_type=SCORED, user_ids=ids)
        )
        stored_scores = scores_of(conn, user_ids=ids)
        rows = {str(r.user_id): r for r in recommendations_for(conn, user_ids=ids, day=day)}
        shared = snapshots(conn, {key for _, d in captured for key in snapshot_keys(d)})
    mismatches: list[dict[str, str]] = []

    def differs(uid: str, what: str) -> None:
        mismatches.append({"user": uid, "what": what})

    missing = set(chosen) - {uid for uid, _ in captured}
    for uid in sorted(missing):
        differs(uid, "no INPUTS_CAPTURED event")
    readable = []
    for uid, doc in captured:
        problems = [
            f"the snapshot {key} is missing"
            if key not in shared
            else f"the snapshot {key} no longer hashes to its key"
            for key in snapshot_keys(doc)
            if key not in shared or snapshot_hash(shared[key]) != key
        ]
        for problem in problems:
            differs(uid, problem)
        if not problems:
            readable.append((uid, doc))
    captured = readable
    if captured:
        batch, fx = batch_from_captured(captured, shared)
        versions = {uid: doc["criteria"]["version"] for uid, doc in captured}
        scores = score_batch(batch.holdings, batch.rules, batch.fundamentals)
        recs, failures = recommend_batch(batch, scores, fx)
        # Each stored event is compared with the replay written in its own format: events
        # written before format 2 stay checkable.
        formats: dict[str, int] = {}
        for uid, _doc in captured:
            if uid not in scored:
                differs(uid, "no SCORES_COMPUTED event")
                continue
            try:
                formats[uid] = payload_format(scored[uid])
            except ScoresPayloadError as exc:
                differs(uid, str(exc))
        texts = {f: score_json(scores, versions, format=f) for f in set(formats.values())}
        replayed: dict[str, dict[str, tuple[Decimal, Decimal]]] = {}
        for uid, aid, score, top in zip(
            scores.holdings["user_id"].tolist(),
            scores.holdings["asset_id"].tolist(),
            scores.holdings["score"].tolist(),
            scores.holdings["max_possible_score"].tolist(),
            strict=True,
        ):
            replayed.setdefault(uid, {})[aid] = (Decimal(score), Decimal(top))
        counts = batch.holdings.groupby("user_id").size().to_dict()
        for uid, _doc in captured:
            fmt = formats.get(uid)
            if fmt is not None:
                payload = texts[fmt].payloads.get(uid)
                expected = (
                    no_scores(versions[uid], format=fmt)
                    if payload is None
                    else orjson.loads(payload)
                )
                if not same_document(scored[uid], expected):
                    differs(uid, "SCORES_COMPUTED differs from the replayed scores")
            calculations, current = stored_scores.get(uid, (set(), {}))
            superseded = bool(calculations) and correlation_id not in calculations
            if not superseded and replayed.get(uid, {}) != current:
                differs(uid, "asset_scores rows differ from the replayed scores")
            rec, row = recs.get(uid), rows.get(uid)
            if rec is None or row is None:
                differs(uid, f"no recommendation replayed or stored ({failures.get(uid)})")
                continue
            payload_doc, portfolio_doc = cache_payloads(
                uuid.UUID(uid),
                rec,
                generated_at=datetime.fromisoformat(row.payload["generatedAt"]),
                asset_count=int(counts.get(uid, 0)),
            )
            if payload_doc.model_dump(mode="json", by_alias=True) != row.payload:
                differs(uid, "the recommendations row differs from the replayed recommendations")
            if portfolio_doc.model_dump(mode="json", by_alias=True) != row.portfolio:
                differs(uid, "the portfolio document differs from the replayed one")
    return ReplayOutcome(users=len(users), checked=chosen, mismatches=mismatches)


# Cache -----------------------------------------------------------------------------------


def warm_cache(
    engine: Engine,
    client: redis.Redis,
    *,
    day: date,
    correlation_id: uuid.UUID,
    prefix: str = "",
    ttl_seconds: int = 86_400,
    batch_size: int = 1000,
    only: Sequence[uuid.UUID] | None = None,
) -> StepReport:
    """Write the run's persisted recommendations to Redis, pipelined; an entry newer than
    the run's (a later market date) is kept. Redis errors propagate: the step fails.
    `only`: those of the run's users (a recalculation's users of one market-date)."""
    started = time.perf_counter()
    if only is not None:
        users = sorted(set(only))
    else:
        with engine.connect() as conn:
            users = sorted(
                users_with_event(conn, correlation_id=correlation_id, event_type=COMPLETED)
            )
    written = kept = 0
    for chunk in _chunks(users, batch_size):
        with engine.connect() as conn:
            rows = recommendations_for(conn, user_ids=chunk, day=day, as_text=True)
        entries = [
            CacheEntry(
                user_id=row.user_id,
                market_date=row.market_date,
                generated_at=row.generated_at,
                recs_json=row.payload.encode(),
                portfolio_json=row.portfolio.encode(),
                total_investable=Decimal(row.total_investable),
            )
            for row in rows
            if row.correlation_id == correlation_id
        ]
        outcome = write_entries(client, entries, prefix=prefix, ttl_seconds=ttl_seconds)
        written += outcome.written
        kept += outcome.kept_newer
    return StepReport(
        metrics={
            "users": len(users),
            "written": written,
            "kept_newer": kept,
            "ttl_hours": ttl_seconds / 3600,
        },
        seconds=time.perf_counter() - started,
    )
