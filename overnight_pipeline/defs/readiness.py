"""Readiness per market in the UI (BEHAVIOUR §9; issue 22): was each market's session partition
finished (completed or partial, the cache written) before that market's open?

One asset check per configured market on `recommendation_cache`,
`ready_before_open_<MARKET>` (e.g. `ready_before_open_NYSE`), so one market's red stays red
whatever the other markets do (an asset-level freshness signal, or one check shared by the
markets, turns green with any market's write). The `market_readiness` sensor judges every
market at and after its open for its current session (`core.readiness`, from the job-run
rows) and records an evaluation of the market's check without a run whenever the
market-date's state changes (its cursor keeps the last state per market): the
description and metadata name the market-date, the open (local and UTC), when it finished,
the margin, the state, what is missing and the run. A market whose open passed without its
partition ready raises a `deadline_missed` alert (`overnight_pipeline.alerts`), and each
tick sends the alerts whose delivery is due again.

Executing the checks from the UI judges the markets' current or next sessions at that
moment (before an open: `pending` or `running`, red as WARN).
"""

# No `from __future__ import annotations`: Dagster inspects the context annotations.

import json
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from dagster import (
    AssetCheckEvaluation,
    AssetCheckExecutionContext,
    AssetCheckResult,
    AssetChecksDefinition,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetKey,
    DefaultSensorStatus,
    MetadataValue,
    SensorEvaluationContext,
    SensorResult,
    multi_asset_check,
    sensor,
)

from overnight_pipeline.alerts import Webhook, deadline_alert, deliver_due, raise_alerts
from overnight_pipeline.core.markets import Market
from overnight_pipeline.core.readiness import Readiness, describe, format_margin
from overnight_pipeline.defs.partitions import MARKETS
from overnight_pipeline.defs.resources import Alerting, AppDatabase
from overnight_pipeline.storage import job_runs

READY_CHECK = "ready_before_open"
READINESS_SENSOR = "market_readiness"
READINESS_INTERVAL_SECONDS = 120
CACHE_ASSET = AssetKey("recommendation_cache")


def check_name(market: str) -> str:
    return f"{READY_CHECK}_{market}"


def readiness_check_specs(markets: Sequence[Market]) -> list[AssetCheckSpec]:
    return [
        AssetCheckSpec(
            check_name(m.code),
            asset=CACHE_ASSET,
            description=f"{m.code}: the session's partition finished (completed or partial, "
            f"cache written) before {m.code} opened. Evaluated by the {READINESS_SENSOR} "
            "sensor at and after each open; ERROR when the open passed without it.",
        )
        for m in markets
    ]


def _fields(r: Readiness) -> dict[str, Any]:
    """The check evaluation's fields for one market's readiness."""
    metadata: dict[str, Any] = {
        "market": r.market,
        "session": r.session.isoformat(),
        "partition": f"{r.session}|{r.market}",
        "state": r.state,
        "margin": format_margin(r.margin),
        "detail": r.detail or "-",
    }
    if r.deadline is not None and r.deadline_local is not None:
        metadata["deadline_local"] = f"{r.deadline_local:%Y-%m-%d %H:%M %Z}"
        metadata["deadline_utc"] = MetadataValue.timestamp(r.deadline)
    if r.finished_at is not None:
        metadata["finished_at"] = MetadataValue.timestamp(r.finished_at)
    if r.margin is not None:
        metadata["margin_minutes"] = round(r.margin.total_seconds() / 60, 1)
    if r.run_id:
        metadata["run_id"] = MetadataValue.dagster_run(r.run_id)
    if r.users_ok is not None:
        metadata["users_ok"] = r.users_ok
        metadata["users_failed"] = r.users_failed or 0
    return {
        "check_name": check_name(r.market),
        "passed": r.ok,
        "severity": AssetCheckSeverity.ERROR if r.deadline_missed else AssetCheckSeverity.WARN,
        "metadata": metadata,
        "description": describe(r),
    }


def evaluation(r: Readiness) -> AssetCheckEvaluation:
    return AssetCheckEvaluation(asset_key=CACHE_ASSET, **_fields(r))


def readiness_checks(markets: Sequence[Market]) -> AssetChecksDefinition:
    """The per-market checks, executable on demand (the sensor records them without a run)."""
    by_check = {check_name(m.code): m for m in markets}

    @multi_asset_check(
        name="market_readiness_checks",
        specs=readiness_check_specs(markets),
        can_subset=True,
        description="Judges each selected market's current or next session now.",
    )
    def _readiness(
        context: AssetCheckExecutionContext, database: AppDatabase
    ) -> Iterator[AssetCheckResult]:
        selected = [by_check[k.name] for k in context.selected_asset_check_keys]
        with database.engine.connect() as conn:
            judged = job_runs.market_readiness(conn, selected, now=datetime.now(UTC))
        for r in judged:
            yield AssetCheckResult(asset_key=CACHE_ASSET, **_fields(r))

    return _readiness


def judge_markets(
    context: SensorEvaluationContext,
    database: AppDatabase,
    webhook: Webhook | None,
    *,
    markets: Sequence[Market],
    now: datetime,
) -> SensorResult:
    """What `market_readiness` decides at `now`: each opened market's check when its state
    changed since the cursor, and an alert for each missed deadline (recorded once)."""
    with database.engine.connect() as conn:
        judged = job_runs.market_readiness(conn, markets, now=now)
    opened = [r for r in judged if r.deadline is not None and now >= r.deadline]
    last: dict[str, str] = _cursor(context.cursor)
    events = []
    for r in opened:
        mark = f"{r.session}|{r.state}|{r.run_id or ''}"
        if last.get(r.market) != mark:
            events.append(evaluation(r))
            last[r.market] = mark
    missed = [deadline_alert(r) for r in opened if r.deadline_missed]
    # Recording is idempotent (one alert per market-date and kind); each tick also
    # sends what a receiver that was down could not take before.
    if missed:
        raise_alerts(database.engine, webhook, missed, now=now)
    else:
        deliver_due(database.engine, webhook, now=now)
    for e in events:
        context.log.info(e.description or "")
    cursor = json.dumps(last, sort_keys=True)
    if not events:
        waiting = len(judged) - len(opened)
        return SensorResult(
            skip_reason=f"no change; {waiting} market(s) before their open", cursor=cursor
        )
    return SensorResult(asset_events=events, cursor=cursor)


market_readiness_checks = readiness_checks(list(MARKETS.values()))


@sensor(
    name=READINESS_SENSOR,
    minimum_interval_seconds=READINESS_INTERVAL_SECONDS,
    default_status=DefaultSensorStatus.RUNNING,
    description="At and after each market's open, judges whether its session's partition "
    "was ready before the open and records it as the market's ready_before_open check "
    "on recommendation_cache (when it changes); alerts a missed deadline once.",
)
def market_readiness(
    context: SensorEvaluationContext, database: AppDatabase, alerting: Alerting
) -> SensorResult:
    return judge_markets(
        context,
        database,
        alerting.webhook(),
        markets=list(MARKETS.values()),
        now=datetime.now(UTC),
    )


def _cursor(text: str | None) -> dict[str, str]:
    try:
        value = json.loads(text or "{}")
    except ValueError:
        return {}
    return {str(k): str(v) for k, v in value.items()} if isinstance(value, Mapping) else {}
