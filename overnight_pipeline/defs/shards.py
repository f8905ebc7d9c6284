"""`asset_scores` and `recommendations`: one graph-backed multi-asset (BEHAVIOUR §9).

`plan_shards` splits the partition's users into `USER_SHARDS` shards by a stable hash of the
user id (one dynamic step each, retried and re-executed alone, on whatever executor the job
runs), and `collect_shards` reports the partition's metadata and checks for both assets,
including the replay check. The shard descriptors are tiny and rebuilt from each step's
mapping key (`ShardPlanIOManager`), so no step output needs shared storage between processes
or machines.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

import re
import resource
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetOut,
    Config,
    ConfigurableIOManager,
    DynamicOut,
    DynamicOutput,
    In,
    InputContext,
    MetadataValue,
    Nothing,
    OpExecutionContext,
    Out,
    Output,
    OutputContext,
    graph_multi_asset,
    op,
)
from pydantic import Field

from overnight_pipeline.defs import checks
from overnight_pipeline.defs.calculation import (
    GROUP,
    SCORES_AND_RECOMMENDATIONS,
    calculated_at,
    correlation_id,
    step_metadata,
)
from overnight_pipeline.defs.partitions import MARKETS, PARTITIONS, guard_partitions, split_key
from overnight_pipeline.defs.resources import AppDatabase, CacheRedis, OvernightTuning
from overnight_pipeline.defs.retries import DB_RETRIES, retried
from overnight_pipeline.steps.cache_warming import ShardCache
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.steps.replay import ReplayOutcome, replay_sample
from overnight_pipeline.storage import job_runs
from overnight_pipeline.storage.batches import load_rates


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
    out=Out(Shard, io_manager_key="shard_plan_io_manager"),
    description="Scores, recommendations and the four events of one shard's users, one pass "
    "and one transaction per batch; a retry resumes after the last committed batch.",
)
@retried(DB_RETRIES)
def score_and_recommend_shard(
    context: OpExecutionContext,
    shard: Shard,
    database: AppDatabase,
    cache: CacheRedis,
    tuning: OvernightTuning,
) -> Iterator[Output[Shard]]:
    guard_partitions(context)
    market, day = split_key(shard.key)
    # Each committed batch's entries go to Redis from here; the cache step writes the rest.
    entries = ShardCache(connect=cache.client, prefix=cache.prefix)
    try:
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
            cache=entries,
        )
    finally:
        entries.close()
    context.log.info(f"{shard.key} shard {shard.index}/{shard.shards}: {report.measures()}")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    yield Output(
        shard, metadata={**step_metadata([(shard.key, report)]), "peak_rss_mb": round(peak, 1)}
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
