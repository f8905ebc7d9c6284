"""The calculation step: scores, recommendations and the four events of every user of one
shard of a partition, one pass and one transaction per batch (`batch_results`)."""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime

from sqlalchemy import Engine

from overnight_pipeline.core.audit import CALC_COMPLETED
from overnight_pipeline.core.chunks import chunks
from overnight_pipeline.core.markets import Market
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.snapshots import asset_positions, market_snapshot
from overnight_pipeline.logs import correlation
from overnight_pipeline.steps.batch_results import BatchResult, Calculation, process_batch
from overnight_pipeline.steps.batches import BatchWriter, prefetched
from overnight_pipeline.steps.cache_warming import ShardCache
from overnight_pipeline.steps.collection import deferred_collection
from overnight_pipeline.steps.market_data import partition_roster
from overnight_pipeline.steps.progress import Progress
from overnight_pipeline.steps.reports import CalculationReport, Failure
from overnight_pipeline.storage.batches import (
    LoadedBatch,
    MarketSnapshot,
    ensure_statistics,
    load_batch,
    load_market_snapshot,
    load_rates,
    partition_instruments,
)
from overnight_pipeline.storage.events import insert_snapshot, users_with_event
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.snapshot_reads import snapshot_reads

# The steps' logger, named as before the steps became a package: the name is in every JSON
# log line.
_log = logging.getLogger("overnight_pipeline.steps")


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
    cache: ShardCache | None = None,
) -> CalculationReport:
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
    failed" per failed user (masked id), each with its fields as `extra`.

    `cache`: each committed batch's entries are written to Redis there (best effort: the
    cache step writes whatever it did not)."""
    if not 0 <= shard < shards:
        raise ValueError(f"shard: {shard} is not in 0..{shards - 1}")
    with correlation(correlation_id):
        started = time.perf_counter()
        work = _prepare(
            engine,
            market=market,
            day=day,
            markets=markets,
            correlation_id=correlation_id,
            calculated_at=calculated_at,
            shard=shard,
            shards=shards,
            only=only,
        )
        calc = Calculation(
            dialect=engine.dialect.name,
            market=market,
            day=day,
            correlation_id=correlation_id,
            calculated_at=calculated_at,
            run_id=run_id,
            fx=work.fx,
            snapshot=work.snapshot_key,
            positions=work.positions,
        )
        batches = list(chunks(work.todo, batch_size))
        progress = Progress(
            log or _log,
            market=market,
            day=day,
            correlation_id=correlation_id,
            run_id=run_id,
            shard=shard,
            shards=shards,
            users=len(work.todo),
            batches=len(batches),
        )
        progress.started(
            users=len(work.users), resumed=len(work.users) - len(work.todo), batch_size=batch_size
        )
        with deferred_collection():
            tally = _run_batches(engine, calc, work, batches, progress, cache)
        return _report(work, tally, cache, seconds=time.perf_counter() - started)


@dataclass(frozen=True)
class _ShardWork:
    """A shard step's users (`todo`: those not done by an earlier attempt) and the market
    data they are priced from."""

    users: list[uuid.UUID]
    todo: list[uuid.UUID]
    fx: FxRates
    snapshot: MarketSnapshot
    snapshot_key: str
    positions: dict[str, int]  # asset id → its row in the snapshot's payload
    analyzed: list[str]


def _prepare(
    engine: Engine,
    *,
    market: str,
    day: date,
    markets: Mapping[str, Market],
    correlation_id: uuid.UUID,
    calculated_at: datetime,
    shard: int,
    shards: int,
    only: Sequence[uuid.UUID] | None,
) -> _ShardWork:
    """The shard's users and market data, with the month of `calculated_at` and the market
    snapshot stored before any batch references them."""
    with engine.begin() as conn:
        ensure_months(conn, [calculated_at])
    with engine.begin() as conn:
        analyzed = ensure_statistics(conn)
    if only is not None:
        everyone = sorted(set(only))
        with engine.connect() as conn:
            held = partition_instruments(conn, everyone)
    else:
        found = partition_roster(
            engine, market=market, day=day, markets=markets, correlation_id=correlation_id
        )
        everyone, held = found.users, found.instruments
    users = [u for u in everyone if shard_of(u, shards) == shard] if shards > 1 else everyone
    with engine.connect() as conn:
        done = users_with_event(conn, correlation_id=correlation_id, event_type=CALC_COMPLETED)
        fx = load_rates(conn, day=day)
        # Every shard prices from the market data of the whole partition's assets: one
        # snapshot, the same hash in every shard, whatever the shard count.
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
    positions = asset_positions(snapshot_payload)
    return _ShardWork(users, todo, fx, snapshot, snapshot_key, positions, analyzed)


def _run_batches(
    engine: Engine,
    calc: Calculation,
    work: _ShardWork,
    batches: Sequence[Sequence[uuid.UUID]],
    progress: Progress,
    cache: ShardCache | None,
) -> _Tally:
    """The batches of the shard's users to do: each read ahead, computed here, written
    behind."""
    tally = _Tally()

    def load(chunk: Sequence[uuid.UUID]) -> LoadedBatch:
        # One snapshot per batch: a concurrent `overnight load` never tears a user's inputs.
        with snapshot_reads(engine) as conn:
            return load_batch(conn, chunk, snapshot=work.snapshot)

    with BatchWriter(engine) as writer:
        for chunk, loaded in prefetched(batches, load):
            result = process_batch(loaded, chunk, calc)
            writer.submit(
                result.write,
                then=None
                if cache is None
                else functools.partial(cache.write, result.cache_entries),
            )
            tally.add(result)
            progress.batch(len(chunk), result.failures)
    return tally


def _report(
    work: _ShardWork, tally: _Tally, cache: ShardCache | None, *, seconds: float
) -> CalculationReport:
    return CalculationReport(
        users_total=len(work.users),
        users_resumed=len(work.users) - len(work.todo),
        users_succeeded=tally.succeeded,
        users_failed=tally.failed,
        assets_scored=tally.assets_scored,
        recommendations_generated=tally.recommendations,
        unallocated_users=tally.unallocated_users,
        rates_stale=work.fx.stale,
        stale_prices=work.snapshot.stale_prices,
        tables_analyzed=", ".join(work.analyzed) or "-",
        cached=0 if cache is None else cache.written,
        cache_kept_newer=0 if cache is None else cache.kept_newer,
        cache_skipped=0 if cache is None else cache.skipped,
        failures=tuple(tally.failures),
        seconds=seconds,
    )


@dataclass
class _Tally:
    """The shard's batches added up."""

    succeeded: int = 0
    failed: int = 0
    assets_scored: int = 0
    recommendations: int = 0
    unallocated_users: int = 0
    failures: list[Failure] = field(default_factory=list)

    def add(self, result: BatchResult) -> None:
        self.succeeded += result.succeeded
        self.failed += result.failed
        self.assets_scored += result.assets_scored
        self.recommendations += result.recommendations
        self.unallocated_users += result.unallocated_users
        self.failures.extend(result.failures)
