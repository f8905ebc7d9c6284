"""The overnight assets (BEHAVIOUR §9), all market × date partitioned, thin over `steps`.

Defined at module level: import them, `materialize([...], resources=...)` them, build their
contexts in tests. The partitions (the configured markets) and the retry delay are read from
the settings when this module is imported, like any Dagster project's environment; the
tuning knobs (batch size, shards, failed-user ratio, replay sample) are the `tuning`
resource and the run's op config, so they show and can be changed in the launchpad.

`asset_scores` and `recommendations` are one graph-backed multi-asset: `plan_shards` splits
the partition's users into `USER_SHARDS` shards by a stable hash of the user id (one
dynamic step each, retried and re-executed alone, on whatever executor the job runs), and
`collect_shards` reports the partition's metadata and checks for both assets, including the
replay check. The shard descriptors are tiny and rebuilt from each step's mapping key
(`ShardPlanIOManager`), so no step output needs shared storage between processes or machines.

There is no backfill policy: every backfill, from the job's page, the asset graph or the CLI,
is one run per market-date (docs/OPERATIONS.md, Backfills). Before any write, every step
checks that its run's partition tags agree with each other and with the work Dagster gave it
(`guard_partitions`), and refuses the run otherwise.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

import re
import resource
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import redis
from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetOut,
    Backoff,
    Config,
    ConfigurableIOManager,
    DynamicOut,
    DynamicOutput,
    Failure,
    In,
    InputContext,
    Jitter,
    MaterializeResult,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    OutputContext,
    RetryPolicy,
    asset,
    graph_multi_asset,
    op,
)
from pydantic import Field

from overnight_pipeline.core.audit import run_correlation_id
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.defs import checks
from overnight_pipeline.defs.partitions import guard_partitions, market_date_partitions, split_key
from overnight_pipeline.defs.resources import AppDatabase, CacheRedis, MarketData, OvernightTuning
from overnight_pipeline.settings import get_settings
from overnight_pipeline.steps.cache_warming import warm_cache
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.steps.market_data import fetch_fundamentals, fetch_prices, fetch_rates
from overnight_pipeline.steps.replay import ReplayOutcome, replay_sample
from overnight_pipeline.steps.reports import ReportT, combined
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.batches import load_rates

GROUP = "overnight"
MARKETS = load_markets(get_settings().markets_file)
PARTITIONS = market_date_partitions(MARKETS)
RETRY_DELAY = get_settings().retry_delay_seconds  # the first retry's; then doubling, jittered

# Provider calls and Redis: three retries; PostgreSQL steps: two, each resuming after the
# last committed batch.
IO_RETRY = RetryPolicy(
    max_retries=3, delay=RETRY_DELAY, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL
)
DB_RETRY = RetryPolicy(
    max_retries=2, delay=RETRY_DELAY, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL
)
SCORES_AND_RECOMMENDATIONS = "scores_and_recommendations"
# The provider steps of every run share the vendor's limit: at most the pool's limit of them
# run at once across runs (deploy/dagster.yaml `concurrency.pools`; one by default).
MARKET_DATA_POOL = "market_data"


def correlation_id(context: OpExecutionContext, key: str) -> uuid.UUID:
    """One calculation per partition of a run: stable across retries and re-executions,
    which share the root run id (BEHAVIOUR §4)."""
    root = context.run.root_run_id or context.run.run_id
    return run_correlation_id(root, key)


def calculated_at(context: OpExecutionContext) -> datetime:
    """When the calculation started: the creation time of the run's root run, the same for
    the run, its retries and its re-executions (like `correlation_id`). It stamps every
    audit row of the calculation and chooses their monthly partition, so a retried step can
    never write into another month than its first attempt."""
    root = context.run.root_run_id or context.run.run_id
    record = context.instance.get_run_record_by_id(root)
    if record is None:
        raise RuntimeError(f"root run {root} of run {context.run.run_id} is not in the instance")
    created = record.create_timestamp
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def _totals(reports: list[tuple[str, ReportT]]) -> ReportT:
    """The reports of the run's partitions as one: numbers summed, flags or-ed, text the
    first one's (`StepReport.combine`)."""
    return combined([report for _, report in reports])


def _metadata(reports: list[tuple[str, ReportT]]) -> dict[str, Any]:
    """Totals over the run's partitions; the failed users (and, for a range, each partition's
    figures) as a markdown table: what the fields above do not already say."""
    totals = _totals(reports)
    meta: dict[str, Any] = totals.to_metadata()
    meta["seconds"] = round(totals.seconds, 3)
    if len(reports) > 1:
        meta["partitions"] = len(reports)
    meta["failures"] = len(totals.failures)
    tables = [
        f"**{key}**\n\n{report.markdown()}"
        for key, report in reports
        if len(reports) > 1 or report.failures
    ]
    if tables:
        meta["summary"] = MetadataValue.md("\n\n".join(tables))
    return meta


def _each_partition(
    context: OpExecutionContext, work: Callable[[str, date, str], ReportT]
) -> list[tuple[str, ReportT]]:
    reports = []
    for key in guard_partitions(context):
        market, day = split_key(key)
        report = work(market, day, key)
        context.log.info(f"{key}: {report.measures()}")
        reports.append((key, report))
    return reports


# Market data ------------------------------------------------------------------------------


def _fetch(
    context: OpExecutionContext,
    database: AppDatabase,
    market_data: MarketData,
    fetch: Callable[..., ReportT],
) -> list[tuple[str, ReportT]]:
    """One of the market-data steps for each partition of the run, through the provider
    chain of the settings."""
    provider = market_data.provider(database.engine)
    return _each_partition(
        context,
        lambda m, d, _k: fetch(database.engine, provider, market=m, day=d, markets=MARKETS),
    )


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    retry_policy=IO_RETRY,
    pool=MARKET_DATA_POOL,
    kinds={"python"},
    check_specs=[checks.rates_check_spec("exchange_rates")],
    description="One USD-quoted exchange-rate snapshot per market-date, shared by every user "
    "of the partition; stale stored rates when the provider is down.",
)
def exchange_rates(
    context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
) -> MaterializeResult:
    reports = _fetch(context, database, market_data, fetch_rates)
    return MaterializeResult(
        metadata=_metadata(reports),
        check_results=[checks.rates_check(_totals(reports), [k for k, _ in reports])],
    )


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    deps=[exchange_rates],
    retry_policy=IO_RETRY,
    pool=MARKET_DATA_POOL,
    check_specs=[checks.prices_check_spec("asset_prices")],
    description="A price for every distinct asset held by the partition's users, fetched "
    "once per asset in rate-limited batches.",
)
def asset_prices(
    context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
) -> MaterializeResult:
    reports = _fetch(context, database, market_data, fetch_prices)
    return MaterializeResult(
        metadata=_metadata(reports),
        check_results=[checks.prices_check(_totals(reports), [k for k, _ in reports])],
    )


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    deps=[exchange_rates],
    retry_policy=IO_RETRY,
    pool=MARKET_DATA_POOL,
    description="Fundamentals for every distinct asset held by the partition's users.",
)
def asset_fundamentals(
    context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
) -> MaterializeResult:
    reports = _fetch(context, database, market_data, fetch_fundamentals)
    return MaterializeResult(metadata=_metadata(reports))


# Scores and recommendations: one pass per batch, fanned out over shards --------------------


@dataclass(frozen=True)
class Shard:
    """One shard of one partition: the users whose `shard_of(id, shards)` is `index`."""

    key: str  # 2026-11-30|NYSE
    index: int
    shards: int

    @property
    def mapping_key(self) -> str:
        market, day = split_key(self.key)
        return f"{market}_{day:%Y%m%d}_shard_{self.index}_of_{self.shards}"

    @property
    def step_key(self) -> str:
        """The key of this shard's step in a run's event log and step stats."""
        return f"{SCORES_AND_RECOMMENDATIONS}.score_and_recommend_shard[{self.mapping_key}]"

    @classmethod
    def from_mapping_key(cls, mapping_key: str) -> "Shard":
        found = _MAPPING_KEY.fullmatch(mapping_key)
        if found is None:
            raise ValueError(f"mapping key: {mapping_key!r} is not MARKET_YYYYMMDD_shard_I_of_N")
        market, ymd, index, shards = found.groups()
        day = date(int(ymd[:4]), int(ymd[4:6]), int(ymd[6:]))
        return cls(f"{day.isoformat()}|{market}", int(index), int(shards))


_MAPPING_KEY = re.compile(r"(\w+?)_(\d{8})_shard_(\d+)_of_(\d+)")


class ShardPlanIOManager(ConfigurableIOManager):
    """Stores nothing: a shard descriptor is rebuilt from the mapping key of the step that
    produced it, in whatever process or machine loads it (the celery executor refuses the
    in-memory IO manager, and a filesystem one would need storage shared by the workers)."""

    def handle_output(self, context: OutputContext, obj: Any) -> None:
        if not isinstance(obj, Shard) or obj.mapping_key != _mapping_key(context):
            raise TypeError(f"shard output: {obj!r} is not the shard of {context.step_key}")

    def load_input(self, context: InputContext) -> Shard:
        upstream = context.upstream_output
        if upstream is None:
            raise TypeError("a shard input must come from a shard step")
        return Shard.from_mapping_key(_mapping_key(upstream))


def _mapping_key(context: OutputContext) -> str:
    """The dynamic output's mapping key, or the one of the mapped step that made the output
    (`…score_and_recommend_shard[NYSE_20261130_shard_0_of_2]`)."""
    if context.mapping_key:
        return context.mapping_key
    found = re.search(r"\[(\w+)\]$", context.step_key or "")
    if found is None:
        raise TypeError(f"step {context.step_key!r} is not a mapped shard step")
    return found.group(1)


class ShardPlan(Config):
    """Per-run override of the tuning resource's shard count (the launchpad's op config)."""

    shards: int | None = Field(
        default=None,
        ge=1,
        le=64,
        description="Shards of this run's partition; empty: the `tuning` resource's "
        "user_shards (USER_SHARDS).",
    )


@op(
    ins={"asset_prices": In(Nothing), "asset_fundamentals": In(Nothing)},
    out=DynamicOut(Shard, io_manager_key="shard_plan_io_manager"),
    description="Splits the partition's users into shards by a stable hash of the user id.",
)
def plan_shards(
    context: OpExecutionContext, config: ShardPlan, tuning: OvernightTuning
) -> Iterator[DynamicOutput[Shard]]:
    shards = config.shards or tuning.user_shards
    for key in guard_partitions(context):
        for index in range(shards):
            shard = Shard(key, index, shards)
            yield DynamicOutput(shard, mapping_key=shard.mapping_key)


@op(
    retry_policy=DB_RETRY,
    out=Out(Shard, io_manager_key="shard_plan_io_manager"),
    description="Scores, recommendations and the four events of one shard's users, one pass "
    "and one transaction per batch; a retry resumes after the last committed batch.",
)
def score_and_recommend_shard(
    context: OpExecutionContext, shard: Shard, database: AppDatabase, tuning: OvernightTuning
) -> Iterator[Output[Shard]]:
    guard_partitions(context)
    market, day = split_key(shard.key)
    report = score_and_recommend(
        database.engine,
        market=market,
        day=day,
        markets=MARKETS,
        correlation_id=correlation_id(context, shard.key),
        calculated_at=calculated_at(context),
        run_id=context.run.run_id,
        batch_size=tuning.batch_size,
        shard=shard.index,
        shards=shard.shards,
        log=context.log,
    )
    context.log.info(f"{shard.key} shard {shard.index}/{shard.shards}: {report.measures()}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    yield Output(
        shard, metadata={**_metadata([(shard.key, report)]), "peak_rss_mb": round(peak, 1)}
    )


REPLAY_MATCHES = "replay_matches"
SCORE_CHECKS = [*checks.user_check_specs("asset_scores")]
RECOMMENDATION_CHECKS = [
    *checks.user_check_specs("recommendations"),
    AssetCheckSpec(
        REPLAY_MATCHES,
        asset="recommendations",
        description="ERROR: a sample of the calculation's users, recomputed from their "
        "INPUTS_CAPTURED alone, differs from what was stored (SCORES_COMPUTED, asset_scores, "
        "the recommendation row).",
    ),
]
_CHECK_OUTPUTS = {
    f"{spec.asset_key.to_python_identifier()}_{spec.name}": spec
    for spec in [*SCORE_CHECKS, *RECOMMENDATION_CHECKS]
}


@op(
    out={
        "asset_scores": Out(Nothing),
        "recommendations": Out(Nothing),
        **{name: Out(Nothing) for name in _CHECK_OUTPUTS},
    },
    description="Reports the partition's scores and recommendations (from the event store, "
    "exact across retries) and evaluates their checks, the replay of a sample included.",
)
def collect_shards(
    context: OpExecutionContext,
    shards: list[Shard],
    database: AppDatabase,
    tuning: OvernightTuning,
) -> Iterator[Output[Any] | AssetCheckResult]:
    started = time.perf_counter()
    keys = guard_partitions(context)
    cids = {key: correlation_id(context, key) for key in keys}
    with database.engine.connect() as conn:
        counts = job_runs.calculation_counts(conn, list(cids.values()))
        sample = job_runs.failed_users(conn, list(cids.values()), limit=10) if counts.failed else []
        rates_stale = any(load_rates(conn, day=split_key(key)[1]).stale for key in keys)
    replays = {
        key: replay_sample(
            database.engine,
            correlation_id=cid,
            day=split_key(key)[1],
            sample_size=tuning.replay_sample,
        )
        for key, cid in cids.items()
    }
    # The shards' wall time in this run (side by side: first start to last end).
    stats = [
        st
        for st in context.instance.get_run_step_stats(context.run_id)
        if "score_and_recommend_shard[" in st.step_key and st.start_time and st.end_time
    ]
    shard_seconds = (
        max(st.end_time for st in stats) - min(st.start_time for st in stats) if stats else 0.0
    )
    common = {
        "partitions": ", ".join(keys),
        "seconds": round(shard_seconds, 3),
        "shards": max((s.shards for s in shards), default=0),
        "users_total": counts.started,
        "users_succeeded": counts.completed,
        "users_failed": counts.failed,
        "rates_stale": rates_stale,
    }
    failed_table = (
        {
            "failed_sample": MetadataValue.md(
                "| user | stage | error |\n| --- | --- | --- |\n"
                + "\n".join(f"| {s['user']} | {s['stage']} | {s['error'][:200]} |" for s in sample)
            )
        }
        if sample
        else {}
    )
    yield Output(
        None,
        "asset_scores",
        metadata={**common, "assets_scored": counts.holdings_scored, **failed_table},
    )
    yield Output(
        None,
        "recommendations",
        metadata={
            **common,
            "recommendations_generated": counts.recommendations,
            "replayed_users": sum(len(r.checked) for r in replays.values()),
            "collect_seconds": round(time.perf_counter() - started, 3),
            **failed_table,
        },
    )
    results = [
        *checks.user_checks(
            counts, max_ratio=tuning.max_failed_user_ratio, sample=sample, partitions=keys
        ),
        replay_check(replays),
    ]
    for spec in _CHECK_OUTPUTS.values():
        result = next(r for r in results if r.check_name == spec.name)
        yield AssetCheckResult(
            check_name=spec.name,
            asset_key=spec.asset_key,
            passed=result.passed,
            severity=result.severity,
            metadata=result.metadata,
            description=result.description,
        )


def replay_check(replays: dict[str, ReplayOutcome]) -> AssetCheckResult:
    """ERROR when any replayed user differs from what the run stored."""
    mismatches = [(key, m) for key, r in replays.items() for m in r.mismatches]
    checked = sum(len(r.checked) for r in replays.values())
    meta: dict[str, Any] = {
        "partition": ", ".join(replays),
        "users_replayed": checked,
        "users_in_calculation": sum(r.users for r in replays.values()),
        "mismatches": len(mismatches),
    }
    if mismatches:
        meta["differences"] = MetadataValue.md(
            "| partition | user | difference |\n| --- | --- | --- |\n"
            + "\n".join(f"| {k} | {m['user']} | {m['what']} |" for k, m in mismatches[:20])
        )
    return AssetCheckResult(
        check_name=REPLAY_MATCHES,
        passed=not mismatches,
        severity=AssetCheckSeverity.ERROR,
        metadata=meta,
        description=f"{', '.join(replays)}: {len(mismatches)} differences in {checked} "
        "users replayed from their events",
    )


@graph_multi_asset(
    name=SCORES_AND_RECOMMENDATIONS,
    partitions_def=PARTITIONS,
    group_name=GROUP,
    outs={
        "asset_scores": AssetOut(
            dagster_type=Nothing,
            description="Scores of every holding of the partition's users against their "
            "criteria, with CALC_STARTED, INPUTS_CAPTURED and SCORES_COMPUTED per user.",
        ),
        "recommendations": AssetOut(
            dagster_type=Nothing,
            description="Buy recommendations for each user's monthly contribution, persisted "
            "per user and market-date (the dashboard's fallback), with CALC_COMPLETED.",
        ),
    },
    check_specs=[*SCORE_CHECKS, *RECOMMENDATION_CHECKS],
)
def scores_and_recommendations(asset_prices: None, asset_fundamentals: None) -> dict[str, Any]:
    shards = plan_shards(asset_prices=asset_prices, asset_fundamentals=asset_fundamentals)
    done = shards.map(score_and_recommend_shard)
    collected = collect_shards(done.collect())
    return {
        "asset_scores": collected.asset_scores,
        "recommendations": collected.recommendations,
        **{name: getattr(collected, name) for name in _CHECK_OUTPUTS},
    }


# Cache ------------------------------------------------------------------------------------


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    deps=[AssetKey("recommendations")],
    retry_policy=IO_RETRY,
    kinds={"redis"},
    description="recs:{userId} and portfolio:{userId} in Redis (24 h TTL); an older "
    "market-date never replaces a newer entry.",
)
def recommendation_cache(
    context: AssetExecutionContext,
    database: AppDatabase,
    cache: CacheRedis,
    tuning: OvernightTuning,
) -> MaterializeResult:
    client = cache.client()
    try:
        reports = _each_partition(
            context,
            lambda _m, d, k: warm_cache(
                database.engine,
                client,
                day=d,
                correlation_id=correlation_id(context, k),
                prefix=cache.prefix,
                batch_size=tuning.batch_size,
            ),
        )
    except redis.RedisError as exc:
        raise Failure(
            description=f"Redis unreachable or failing ({type(exc).__name__}: {exc}); the "
            "recommendations stay persisted in the database and the dashboard serves them "
            "from there.",
            metadata={"redis_error": str(exc)},
        ) from exc
    finally:
        client.close()
    return MaterializeResult(metadata=_metadata(reports))


OVERNIGHT_ASSETS = [
    exchange_rates,
    asset_prices,
    asset_fundamentals,
    scores_and_recommendations,
    recommendation_cache,
]
