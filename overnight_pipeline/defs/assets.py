"""The overnight assets (BEHAVIOUR §9), all market × date partitioned, thin over `steps`.

Defined at module level: import them, `materialize([...], resources=...)` them, build their
contexts in tests. The partitions (the configured markets) are read when the definitions
load (`defs.partitions`); the tuning knobs (batch size, shards, failed-user ratio, replay
sample, the retries' first delay) are the `tuning` resource and the run's op config, so they
show and can be changed in the launchpad.

Here: the market-data assets and the cache; `asset_scores` and `recommendations` are one
graph-backed multi-asset fanned out over shards (`defs.shards`).

There is no backfill policy: every backfill, from the job's page, the asset graph or the CLI,
is one run per market-date (docs/OPERATIONS.md, Backfills). Before any write, every step
checks that its run's partition tags agree with each other and with the work Dagster gave it
(`guard_partitions`), and refuses the run otherwise.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

from collections.abc import Callable

import redis
from dagster import (
    AssetExecutionContext,
    AssetKey,
    Failure,
    MaterializeResult,
    OpExecutionContext,
    asset,
)

from overnight_pipeline.defs import checks
from overnight_pipeline.defs.calculation import (
    GROUP,
    MARKET_DATA_POOL,
    combined_report,
    correlation_id,
    each_partition,
    step_metadata,
)
from overnight_pipeline.defs.partitions import MARKETS, PARTITIONS
from overnight_pipeline.defs.resources import AppDatabase, CacheRedis, MarketData, OvernightTuning
from overnight_pipeline.defs.retries import IO_RETRIES, retried
from overnight_pipeline.defs.shards import scores_and_recommendations
from overnight_pipeline.steps.cache_warming import warm_cache
from overnight_pipeline.steps.market_data import fetch_fundamentals, fetch_prices, fetch_rates
from overnight_pipeline.steps.reports import ReportT

# Market data ------------------------------------------------------------------------------


def _fetch(
    context: OpExecutionContext,
    database: AppDatabase,
    market_data: MarketData,
    fetch: Callable[..., ReportT],
) -> list[tuple[str, ReportT]]:
    """One of the market-data steps for each partition of the run, through the provider
    chain of the settings, for the users of the partition's calculation (its roster, stored
    by the first of its steps)."""
    provider = market_data.provider(database.engine)
    return each_partition(
        context,
        lambda m, d, k: fetch(
            database.engine,
            provider,
            market=m,
            day=d,
            markets=MARKETS,
            correlation_id=correlation_id(context, k),
        ),
    )


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    pool=MARKET_DATA_POOL,
    kinds={"python"},
    check_specs=[checks.rates_check_spec("exchange_rates")],
    description="One USD-quoted exchange-rate snapshot per market-date, shared by every user "
    "of the partition; stale stored rates when the provider is down.",
)
@retried(IO_RETRIES)
def exchange_rates(
    context: AssetExecutionContext,
    database: AppDatabase,
    market_data: MarketData,
    tuning: OvernightTuning,
) -> MaterializeResult:
    reports = _fetch(context, database, market_data, fetch_rates)
    return MaterializeResult(
        metadata=step_metadata(reports),
        check_results=[checks.rates_check(combined_report(reports), [k for k, _ in reports])],
    )


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    deps=[exchange_rates],
    pool=MARKET_DATA_POOL,
    check_specs=[checks.prices_check_spec("asset_prices")],
    description="A price for every distinct asset held by the partition's users, fetched "
    "once per asset in rate-limited batches.",
)
@retried(IO_RETRIES)
def asset_prices(
    context: AssetExecutionContext,
    database: AppDatabase,
    market_data: MarketData,
    tuning: OvernightTuning,
) -> MaterializeResult:
    reports = _fetch(context, database, market_data, fetch_prices)
    return MaterializeResult(
        metadata=step_metadata(reports),
        check_results=[checks.prices_check(combined_report(reports), [k for k, _ in reports])],
    )


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    deps=[exchange_rates],
    pool=MARKET_DATA_POOL,
    description="Fundamentals for every distinct asset held by the partition's users.",
)
@retried(IO_RETRIES)
def asset_fundamentals(
    context: AssetExecutionContext,
    database: AppDatabase,
    market_data: MarketData,
    tuning: OvernightTuning,
) -> MaterializeResult:
    reports = _fetch(context, database, market_data, fetch_fundamentals)
    return MaterializeResult(metadata=step_metadata(reports))


# Cache ------------------------------------------------------------------------------------


@asset(
    partitions_def=PARTITIONS,
    group_name=GROUP,
    deps=[AssetKey("recommendations")],
    kinds={"redis"},
    description="recs:{userId} and portfolio:{userId} in Redis (24 h TTL); an older "
    "market-date never replaces a newer entry.",
)
@retried(IO_RETRIES)
def recommendation_cache(
    context: AssetExecutionContext,
    database: AppDatabase,
    cache: CacheRedis,
    tuning: OvernightTuning,
) -> MaterializeResult:
    client = cache.client()
    try:
        reports = each_partition(
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
    return MaterializeResult(metadata=step_metadata(reports))


OVERNIGHT_ASSETS = [
    exchange_rates,
    asset_prices,
    asset_fundamentals,
    scores_and_recommendations,
    recommendation_cache,
]
