"""Asset checks of the overnight assets (BEHAVIOUR §7).

| check | on | severity | fails when |
| --- | --- | --- | --- |
| `rates_fresh` | exchange_rates | WARN | the rate provider was down: stored rates were used |
| `prices_complete` | asset_prices | WARN | some held assets got no price (their users are dropped) |
| `no_failed_users` | asset_scores, recommendations | WARN | any user of the calculation failed |
| `failed_users_within_limit` | asset_scores, recommendations | ERROR, not blocking | failed users / started users > `MAX_FAILED_USER_RATIO` |
| `ready_before_open_<MARKET>` | recommendation_cache | ERROR after the open | `defs/readiness.py`: the market's session was not ready at its open |

User counts come from the event store (per correlation id), not from one attempt's
metadata, so a retried or re-executed step judges the whole calculation. No check blocks:
a failed user fails alone (BEHAVIOUR §7), so even a partition of 4 users with 1 broken one gives
the other 3 their recommendations and cache entries; the ERROR check is red in the UI and
the job-run row is `partial`. The checks are not partitioned (partitioned check specs are a
preview feature in Dagster 1.13, "not ready for production use"): each result names its
market-date in its description and in a `partition` metadata entry instead.
"""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

from collections.abc import Sequence
from typing import Any

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    MetadataValue,
)

from overnight_pipeline.steps.reports import PricesReport, RatesReport
from overnight_pipeline.storage.job_runs import CalculationCounts

RATES_FRESH = "rates_fresh"
PRICES_COMPLETE = "prices_complete"
NO_FAILED_USERS = "no_failed_users"
FAILED_USERS_WITHIN_LIMIT = "failed_users_within_limit"


def user_check_specs(asset: str) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            NO_FAILED_USERS,
            asset=asset,
            description="WARN: some users of the calculation failed; the run is "
            "`partial` and each failed user has a failed CALC_COMPLETED.",
        ),
        AssetCheckSpec(
            FAILED_USERS_WITHIN_LIMIT,
            asset=asset,
            description="ERROR: more users failed than MAX_FAILED_USER_RATIO allows. "
            "Not blocking: the healthy users still get their "
            "recommendations and cache entries; the run is `partial`.",
        ),
    ]


def _where(partitions: Sequence[str]) -> tuple[dict[str, Any], str]:
    """The `partition` metadata entry and description prefix of a check result."""
    if not partitions:
        return {}, ""
    text = ", ".join(partitions)
    return {"partition": text}, f"{text}: "


def user_checks(
    counts: CalculationCounts,
    *,
    max_ratio: float,
    sample: Sequence[dict[str, str]] = (),
    partitions: Sequence[str] = (),
) -> list[AssetCheckResult]:
    """The two user checks of a calculation from its event-store counts."""
    where, prefix = _where(partitions)
    meta: dict[str, Any] = {
        **where,
        "users_started": counts.started,
        "users_failed": counts.failed,
        "failed_ratio": round(counts.failed_ratio, 4),
        "max_failed_user_ratio": max_ratio,
    }
    if sample:
        meta["failed_sample"] = MetadataValue.md(
            "| user | stage | error |\n| --- | --- | --- |\n"
            + "\n".join(f"| {s['user']} | {s['stage']} | {s['error'][:200]} |" for s in sample)
        )
    return [
        AssetCheckResult(
            check_name=NO_FAILED_USERS,
            passed=counts.failed == 0,
            severity=AssetCheckSeverity.WARN,
            metadata=meta,
            description=f"{prefix}{counts.failed} of {counts.started} users failed",
        ),
        AssetCheckResult(
            check_name=FAILED_USERS_WITHIN_LIMIT,
            passed=counts.failed_ratio <= max_ratio,
            severity=AssetCheckSeverity.ERROR,
            metadata=meta,
            description=f"{prefix}failed ratio {counts.failed_ratio:.2%} (limit {max_ratio:.2%})",
        ),
    ]


def rates_check_spec(asset: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        RATES_FRESH,
        asset=asset,
        description="WARN: the rate provider could not answer and the newest "
        "stored rates were used (marked stale).",
    )


def rates_check(totals: RatesReport, partitions: Sequence[str] = ()) -> AssetCheckResult:
    """`totals`: the step's reports of the run's partitions combined."""
    stale = totals.stale
    where, prefix = _where(partitions)
    return AssetCheckResult(
        check_name=RATES_FRESH,
        passed=not stale,
        severity=AssetCheckSeverity.WARN,
        metadata={
            **where,
            **{
                k: v
                for k, v in (
                    ("source", totals.source),
                    ("stale_currencies", totals.stale_currencies),
                    ("stale_age_hours", totals.stale_age_hours),
                )
                if v is not None
            },
        },
        description=prefix
        + ("stored rates used (stale)" if stale else "rates fetched for the date"),
    )


def prices_check_spec(asset: str) -> AssetCheckSpec:
    return AssetCheckSpec(
        PRICES_COMPLETE,
        asset=asset,
        description="WARN: some held assets have no price, neither fetched "
        "nor stored; they are dropped for their users.",
    )


def prices_check(totals: PricesReport, partitions: Sequence[str] = ()) -> AssetCheckResult:
    """`totals`: the step's reports of the run's partitions combined."""
    missing = totals.missing
    where, prefix = _where(partitions)
    return AssetCheckResult(
        check_name=PRICES_COMPLETE,
        passed=missing == 0,
        severity=AssetCheckSeverity.WARN,
        metadata={**where, "missing": missing, "assets": totals.assets},
        description=f"{prefix}{missing} held assets without a price",
    )
