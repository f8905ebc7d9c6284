"""The overnight assets (SPEC §9), all market × date partitioned, thin over `steps`.

Each asset writes its own tables (or Redis) and returns `MaterializeResult` metadata that a
person reads in the UI. With the single-run backfill policy a backfill run may carry several
dates of one market: every asset then processes each of its partition keys in turn.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

import uuid
from collections.abc import Callable, Mapping
from datetime import date
from typing import Any

import redis
from dagster import (
    AssetExecutionContext,
    AssetsDefinition,
    BackfillPolicy,
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
from overnight_pipeline.defs.partitions import split_key
from overnight_pipeline.defs.resources import AppDatabase, CacheRedis, MarketData
from overnight_pipeline.storage.overnight import correlation_id_for

GROUP = "overnight"
IO_RETRY = RetryPolicy(max_retries=3, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)
DB_RETRY = RetryPolicy(max_retries=2, delay=2, backoff=Backoff.EXPONENTIAL, jitter=Jitter.FULL)


def correlation_id(context: AssetExecutionContext, key: str) -> uuid.UUID:
    """One calculation per partition of a run: stable across retries and re-executions,
    which share the root run id (SPEC §4)."""
    root = context.run.root_run_id or context.run.run_id
    return correlation_id_for(f"{root}:{key}")


def _metadata(reports: list[tuple[str, steps.StepReport]]) -> dict[str, Any]:
    """Totals over the run's partitions, plus a markdown table per partition."""
    totals: dict[str, Any] = {}
    for _, report in reports:
        for name, value in report.metrics.items():
            if isinstance(value, bool):
                totals[name] = totals.get(name, False) or value
            elif isinstance(value, int | float) and value is not None:
                totals[name] = totals.get(name, 0) + value
            else:
                totals.setdefault(name, value)
    meta: dict[str, Any] = {k: v for k, v in totals.items() if v is not None}
    meta["seconds"] = round(sum(r.seconds for _, r in reports), 3)
    meta["partitions"] = len(reports)
    failures = [f for _, r in reports for f in r.failures]
    meta["failures"] = len(failures)
    meta["summary"] = MetadataValue.md(
        "\n\n".join(f"**{key}**\n\n{report.markdown()}" for key, report in reports)
    )
    return meta


def _each_partition(
    context: AssetExecutionContext, work: Callable[[str, date, str], steps.StepReport]
) -> list[tuple[str, steps.StepReport]]:
    reports = []
    for key in context.partition_keys:
        market, day = split_key(key)
        report = work(market, day, key)
        context.log.info(f"{context.asset_key.to_user_string()} {key}: {report.metrics}")
        reports.append((key, report))
    return reports


def build_assets(
    partitions: MultiPartitionsDefinition,
    markets: Mapping[str, Market],
    *,
    batch_size: int,
) -> list[AssetsDefinition]:
    """The six assets for `partitions` over the configured `markets`."""
    common: dict[str, Any] = {
        "partitions_def": partitions,
        "group_name": GROUP,
        "backfill_policy": BackfillPolicy.single_run(),
    }

    @asset(**common, retry_policy=IO_RETRY, kinds={"python"},
           description="One USD-quoted exchange-rate snapshot per market-date, shared by "
                       "every user of the partition; stale stored rates when the provider "
                       "is down.")  # fmt: skip
    def exchange_rates(
        context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
    ) -> MaterializeResult:
        provider = market_data.provider(database.engine)
        reports = _each_partition(context, lambda m, d, _k: steps.fetch_rates(
            database.engine, provider, market=m, day=d, markets=markets))  # fmt: skip
        return MaterializeResult(metadata=_metadata(reports))

    @asset(**common, deps=[exchange_rates], retry_policy=IO_RETRY,
           description="A price for every distinct asset held by the partition's users, "
                       "fetched once per asset in rate-limited batches.")  # fmt: skip
    def asset_prices(
        context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
    ) -> MaterializeResult:
        provider = market_data.provider(database.engine)
        reports = _each_partition(context, lambda m, d, _k: steps.fetch_prices(
            database.engine, provider, market=m, day=d, markets=markets))  # fmt: skip
        return MaterializeResult(metadata=_metadata(reports))

    @asset(**common, deps=[exchange_rates], retry_policy=IO_RETRY,
           description="Fundamentals for every distinct asset held by the partition's "
                       "users.")  # fmt: skip
    def asset_fundamentals(
        context: AssetExecutionContext, database: AppDatabase, market_data: MarketData
    ) -> MaterializeResult:
        provider = market_data.provider(database.engine)
        reports = _each_partition(context, lambda m, d, _k: steps.fetch_fundamentals(
            database.engine, provider, market=m, day=d, markets=markets))  # fmt: skip
        return MaterializeResult(metadata=_metadata(reports))

    @asset(**common, deps=[asset_prices, asset_fundamentals], retry_policy=DB_RETRY,
           description="Scores of every holding of the partition's users against their "
                       "criteria, with CALC_STARTED, INPUTS_CAPTURED and SCORES_COMPUTED "
                       "per user.")  # fmt: skip
    def asset_scores(context: AssetExecutionContext, database: AppDatabase) -> MaterializeResult:
        reports = _each_partition(context, lambda m, d, k: steps.score(
            database.engine, market=m, day=d, markets=markets,
            correlation_id=correlation_id(context, k), run_id=context.run.run_id,
            batch_size=batch_size))  # fmt: skip
        return MaterializeResult(metadata=_metadata(reports))

    @asset(**common, deps=[asset_scores], retry_policy=DB_RETRY,
           description="Buy recommendations for each user's monthly contribution, persisted "
                       "per user and market-date (the dashboard's fallback), with "
                       "CALC_COMPLETED.")  # fmt: skip
    def recommendations(context: AssetExecutionContext, database: AppDatabase) -> MaterializeResult:
        reports = _each_partition(context, lambda m, d, k: steps.recommend(
            database.engine, market=m, day=d, correlation_id=correlation_id(context, k),
            batch_size=batch_size))  # fmt: skip
        return MaterializeResult(metadata=_metadata(reports))

    @asset(**common, deps=[recommendations], retry_policy=IO_RETRY, kinds={"redis"},
           description="recs:{userId} and portfolio:{userId} in Redis (24 h TTL); an older "
                       "market-date never replaces a newer entry.")  # fmt: skip
    def recommendation_cache(
        context: AssetExecutionContext, database: AppDatabase, cache: CacheRedis
    ) -> MaterializeResult:
        client = cache.client()
        try:
            reports = _each_partition(context, lambda _m, d, k: steps.warm_cache(
                database.engine, client, day=d, correlation_id=correlation_id(context, k),
                prefix=cache.prefix, batch_size=batch_size))  # fmt: skip
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

    return [exchange_rates, asset_prices, asset_fundamentals, asset_scores, recommendations,
            recommendation_cache]  # fmt: skip
