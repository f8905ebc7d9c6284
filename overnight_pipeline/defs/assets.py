"""The overnight assets (SPEC §9), all market × date partitioned, thin over `steps`.

Each asset writes its own tables (or Redis) and returns `MaterializeResult` metadata that a
person reads in the UI. There is no backfill policy: every backfill, from the job's page,
the asset graph or the CLI, is one run per market-date, whose tags Dagster builds from the
partition (a single-run policy made job backfills copy one partition's tags onto every run,
so each run built that partition: DAGSTER_NOTES). Before any write, every step checks that
its run's partition tags agree with each other and with the work Dagster gave it
(`guard_partitions`), and refuses the run otherwise.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

import uuid
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import redis
from dagster import (
    AssetCheckResult,
    AssetExecutionContext,
    AssetsDefinition,
    Backoff,
    Failure,
    Jitter,
    MaterializeResult,
    MetadataValue,
    MultiPartitionsDefinition,
    RetryPolicy,
    asset,
)

from overnight_pipeline import steps
from overnight_pipeline.core.markets import Market
from overnight_pipeline.defs import checks
from overnight_pipeline.defs.partitions import guard_partitions, split_key
from overnight_pipeline.defs.resources import AppDatabase, CacheRedis, MarketData
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.overnight import correlation_id_for

GROUP = "overnight"
RETRY_DELAY = 2.0  # seconds before the first retry; then doubling, with full jitter


def io_retry(delay: float = RETRY_DELAY) -> RetryPolicy:
    """Provider calls and Redis: three retries with exponential backoff and jitter."""
    return RetryPolicy(max_retries=3, delay=delay, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)


def db_retry(delay: float = RETRY_DELAY) -> RetryPolicy:
    """PostgreSQL steps: two retries; each resumes after the last committed batch."""
    return RetryPolicy(max_retries=2, delay=delay, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)


IO_RETRY = io_retry()
DB_RETRY = db_retry()


def correlation_id(context: AssetExecutionContext, key: str) -> uuid.UUID:
    """One calculation per partition of a run: stable across retries and re-executions,
    which share the root run id (SPEC §4)."""
    root = context.run.root_run_id or context.run.run_id
    return correlation_id_for(f"{root}:{key}")


def _totals(reports: list[tuple[str, steps.StepReport]]) -> dict[str, Any]:
    """Each metric summed (numbers), or-ed (flags) or first seen (text) over the partitions."""
    totals: dict[str, Any] = {}
    for _, report in reports:
        for name, value in report.metrics.items():
            if isinstance(value, bool):
                totals[name] = totals.get(name, False) or value
            elif isinstance(value, int | float) and value is not None:
                totals[name] = totals.get(name, 0) + value
            else:
                totals.setdefault(name, value)
    return totals


def _metadata(reports: list[tuple[str, steps.StepReport]]) -> dict[str, Any]:
    """Totals over the run's partitions; the failed users (and, for a range, each partition's
    figures) as a markdown table: what the fields above do not already say."""
    meta: dict[str, Any] = {k: v for k, v in _totals(reports).items() if v is not None}
    meta["seconds"] = round(sum(r.seconds for _, r in reports), 3)
    if len(reports) > 1:
        meta["partitions"] = len(reports)
    failures = [f for _, r in reports for f in r.failures]
    meta["failures"] = len(failures)
    tables = [
        f"**{key}**\n\n{report.markdown()}"
        for key, report in reports
        if len(reports) > 1 or report.failures
    ]
    if tables:
        meta["summary"] = MetadataValue.md("\n\n".join(tables))
    return meta


def _each_partition(
    context: AssetExecutionContext, work: Callable[[str, date, str], steps.StepReport]
) -> list[tuple[str, steps.StepReport]]:
    reports = []
    for key in guard_partitions(context):
        market, day = split_key(key)
        report = work(market, day, key)
        context.log.info(f"{context.asset_key.to_user_string()} {key}: {report.metrics}")
        reports.append((key, report))
    return reports


def _user_checks(
    context: AssetExecutionContext, database: AppDatabase, max_ratio: float
) -> list[AssetCheckResult]:
    """The user checks over the calculations (one per partition) of this run."""
    keys = guard_partitions(context)
    cids = [correlation_id(context, key) for key in keys]
    with database.engine.connect() as conn:
        counts = job_runs.calculation_counts(conn, cids)
        sample = job_runs.failed_users(conn, cids, limit=10) if counts.failed else []
    return checks.user_checks(counts, max_ratio=max_ratio, sample=sample, partitions=keys)


def build_assets(
    partitions: MultiPartitionsDefinition,
    markets: Mapping[str, Market],
    *,
    batch_size: int,
    retry_delay: float = RETRY_DELAY,
    max_failed_user_ratio: float = 0.05,
) -> list[AssetsDefinition]:
    """The six assets for `partitions` over the configured `markets`, with their checks;
    `retry_delay` is the first retry's delay in seconds."""
    common: dict[str, Any] = {"partitions_def": partitions, "group_name": GROUP}
    io, db = io_retry(retry_delay), db_retry(retry_delay)

    @asset(
        **common,
        retry_policy=io,
        kinds={"python"},
        check_specs=[checks.rates_check_spec("exchange_rates")],
        description="One USD-quoted exchange-rate snapshot per market-date, shared by "
        "every user of the partition; stale stored rates when the provider "
        "is down.",
    )
    def exchange_rates(
        context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
    ) -> MaterializeResult:
        provider = market_data.provider(database.engine)
        reports = _each_partition(
            context,
            lambda m, d, _k: steps.fetch_rates(
                database.engine, provider, market=m, day=d, markets=markets
            ),
        )
        return MaterializeResult(
            metadata=_metadata(reports),
            check_results=[checks.rates_check(_totals(reports), [k for k, _ in reports])],
        )

    @asset(
        **common,
        deps=[exchange_rates],
        retry_policy=io,
        check_specs=[checks.prices_check_spec("asset_prices")],
        description="A price for every distinct asset held by the partition's users, "
        "fetched once per asset in rate-limited batches.",
    )
    def asset_prices(
        context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
    ) -> MaterializeResult:
        provider = market_data.provider(database.engine)
        reports = _each_partition(
            context,
            lambda m, d, _k: steps.fetch_prices(
                database.engine, provider, market=m, day=d, markets=markets
            ),
        )
        return MaterializeResult(
            metadata=_metadata(reports),
            check_results=[checks.prices_check(_totals(reports), [k for k, _ in reports])],
        )

    @asset(
        **common,
        deps=[exchange_rates],
        retry_policy=io,
        description="Fundamentals for every distinct asset held by the partition's users.",
    )
    def asset_fundamentals(
        context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
    ) -> MaterializeResult:
        provider = market_data.provider(database.engine)
        reports = _each_partition(
            context,
            lambda m, d, _k: steps.fetch_fundamentals(
                database.engine, provider, market=m, day=d, markets=markets
            ),
        )
        return MaterializeResult(metadata=_metadata(reports))

    @asset(
        **common,
        deps=[asset_prices, asset_fundamentals],
        retry_policy=db,
        check_specs=checks.user_check_specs("asset_scores"),
        description="Scores of every holding of the partition's users against their "
        "criteria, with CALC_STARTED, INPUTS_CAPTURED and SCORES_COMPUTED "
        "per user.",
    )
    def asset_scores(context: AssetExecutionContext, database: AppDatabase) -> MaterializeResult:
        reports = _each_partition(
            context,
            lambda m, d, k: steps.score(
                database.engine,
                market=m,
                day=d,
                markets=markets,
                correlation_id=correlation_id(context, k),
                run_id=context.run.run_id,
                batch_size=batch_size,
            ),
        )
        return MaterializeResult(
            metadata=_metadata(reports),
            check_results=_user_checks(context, database, max_failed_user_ratio),
        )

    @asset(
        **common,
        deps=[asset_scores],
        retry_policy=db,
        check_specs=checks.user_check_specs("recommendations"),
        description="Buy recommendations for each user's monthly contribution, persisted "
        "per user and market-date (the dashboard's fallback), with "
        "CALC_COMPLETED.",
    )
    def recommendations(context: AssetExecutionContext, database: AppDatabase) -> MaterializeResult:
        reports = _each_partition(
            context,
            lambda m, d, k: steps.recommend(
                database.engine,
                market=m,
                day=d,
                correlation_id=correlation_id(context, k),
                batch_size=batch_size,
            ),
        )
        return MaterializeResult(
            metadata=_metadata(reports),
            check_results=_user_checks(context, database, max_failed_user_ratio),
        )

    @asset(
        **common,
        deps=[recommendations],
        retry_policy=io,
        kinds={"redis"},
        freshness_policy=checks.CACHE_FRESHNESS,
        description="recs:{userId} and portfolio:{userId} in Redis (24 h TTL); an older "
        "market-date never replaces a newer entry.",
    )
    def recommendation_cache(
        context: AssetExecutionContext, database: AppDatabase, cache: CacheRedis
    ) -> MaterializeResult:
        client = cache.client()
        try:
            reports = _each_partition(
                context,
                lambda _m, d, k: steps.warm_cache(
                    database.engine,
                    client,
                    day=d,
                    correlation_id=correlation_id(context, k),
                    prefix=cache.prefix,
                    batch_size=batch_size,
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

    return [
        exchange_rates,
        asset_prices,
        asset_fundamentals,
        asset_scores,
        recommendations,
        recommendation_cache,
    ]
