"""One market-date partition end to end through Dagster, on PostgreSQL and Redis (BEHAVIOUR §4,
§5, §9)."""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import datetime, timedelta
from decimal import Decimal

import orjson
from dagster import Definitions
from sqlalchemy import func, select

from overnight_pipeline.core.captured_reader import holding_assets, self_contained, snapshot_keys
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.payloads import CachedPortfolioSummary, CachedRecommendations
from overnight_pipeline.core.recommendations import ClassSpec, HoldingInput, recommend
from overnight_pipeline.core.scored import full_scores
from overnight_pipeline.core.scoring import replay, score_holdings, validate_criteria
from overnight_pipeline.storage.events import snapshots
from overnight_pipeline.storage.models import (
    assets_table,
    calculation_events_table,
    recommendations_table,
)
from overnight_pipeline.storage.queries import calculations_for_asset
from overnight_pipeline.storage.scores import asset_scores_table
from overnight_pipeline_tests.pipeline.conftest import BROKEN_USER, DAY, Pipeline

D = Decimal


def events_by_user(pipeline: Pipeline, correlation_id: uuid.UUID | None = None):
    e = calculation_events_table
    stmt = select(e.c.user_id, e.c.event_type, e.c.correlation_id, e.c.payload)
    if correlation_id is not None:
        stmt = stmt.where(e.c.correlation_id == correlation_id)
    out: dict[uuid.UUID, dict[str, dict]] = {}
    with pipeline.engine.connect() as conn:
        for user_id, kind, _cid, payload in conn.execute(stmt):
            assert kind not in out.setdefault(user_id, {}), f"duplicate {kind} for {user_id}"
            out[user_id][kind] = payload
    return out


def correlation_ids(pipeline: Pipeline) -> list[uuid.UUID]:
    e = calculation_events_table
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            select(e.c.correlation_id, func.min(e.c.created_at))
            .where(e.c.event_type == "CALC_STARTED")
            .group_by(e.c.correlation_id)
            .order_by(func.min(e.c.created_at))
        )
        return [r[0] for r in rows]


def one_user_recommendation(doc: dict):
    """What the core's one-user path computes from a captured input document."""
    d = lambda v: None if v is None else D(v)  # noqa: E731
    rules = validate_criteria(doc["criteria"]["rules"])
    holdings = [
        HoldingInput(
            h["assetId"],
            h["symbol"],
            h["assetClass"],
            D(h["quantity"]),
            h["currency"],
            d(h["price"]),
            None if h["priceAsOf"] is None else datetime.fromisoformat(h["priceAsOf"]),
        )
        for h in doc["holdings"]
    ]
    classes = [
        ClassSpec(
            c["name"],
            D(c["targetMin"]),
            D(c["targetMax"]),
            c["maxAssets"],
            d(c["minAllocationValue"]),
        )
        for c in doc["assetClasses"]
    ]
    fundamentals = {a: {m: d(v) for m, v in f.items()} for a, f in doc["fundamentals"].items()}
    scores = score_holdings([(h.asset_id, h.asset_class) for h in holdings], rules, fundamentals)
    fx = FxRates(usd_to={c: D(v) for c, v in doc["rates"]["usdTo"].items()})
    return recommend(
        base_currency=doc["baseCurrency"],
        contribution=d(doc["contribution"]),
        classes=classes,
        holdings=holdings,
        scores=scores,
        fx=fx,
        criteria_version=doc["criteria"]["version"],
    )


def test_the_definitions_load_from_the_defs_folder() -> None:
    from overnight_pipeline.definitions import definitions_for
    from overnight_pipeline.settings import get_settings

    defs = definitions_for(get_settings())
    Definitions.validate_loadable(defs)
    job = defs.resolve_job_def("overnight_job")
    assert {n.name for n in job.graph.node_defs} >= {"exchange_rates", "recommendation_cache"}
    assert {j.name for j in defs.resolve_all_job_defs()} >= {
        "overnight_job",
        "recalculation_job",
        "audit_retention_job",
    }
    assert {s.name for s in defs.schedules or []} >= {"overnight_nyse", "audit_retention_daily"}
    assert {s.name for s in defs.sensors or []} >= {"market_readiness", "user_changes_sensor"}


def test_a_partition_runs_end_to_end_and_a_broken_user_fails_alone(pipeline: Pipeline) -> None:
    result = pipeline.run("NYSE", DAY)
    assert result.success
    cid = correlation_ids(pipeline)[-1]
    events = events_by_user(pipeline, cid)
    broken = events.pop(BROKEN_USER)
    # The broken user: started, then failed with the reason; nothing else.
    assert set(broken) == {"CALC_STARTED", "CALC_COMPLETED"}
    assert broken["CALC_COMPLETED"]["status"] == "failed"
    assert "no exchange rate for" in broken["CALC_COMPLETED"]["error"]
    assert "XTS" in broken["CALC_COMPLETED"]["error"]
    # The demo's summary line counts that one user once (both assets report the same pass).
    from overnight_pipeline.runner import _summary

    line = _summary(result, "NYSE", DAY)
    assert (
        line.failed == 1 and line.users == len(events) + 1 and line.seconds["recommendations"] > 0
    )
    # Everyone else: exactly the four events, completed.
    assert len(events) >= 10
    assert all(
        set(e) == {"CALC_STARTED", "INPUTS_CAPTURED", "SCORES_COMPUTED", "CALC_COMPLETED"}
        for e in events.values()
    )
    assert {e["CALC_COMPLETED"]["status"] for e in events.values()} == {"completed"}

    meta = {
        ev.asset_key.to_user_string(): ev.materialization.metadata
        for ev in result.get_asset_materialization_events()
    }
    assert meta["asset_scores"]["users_failed"].value == 1
    assert meta["recommendations"]["users_succeeded"].value == len(events)
    assert meta["recommendation_cache"]["written"].value == len(events)

    r = recommendations_table
    with pipeline.engine.connect() as conn:
        rows = {row.user_id: row for row in conn.execute(select(r).where(r.c.market_date == DAY))}
        score_rows = conn.execute(
            select(
                asset_scores_table.c.user_id,
                asset_scores_table.c.asset_id,
                asset_scores_table.c.score,
            ).where(asset_scores_table.c.market_date == DAY)
        ).all()
    assert set(rows) == set(events)
    stored_scores = {(u, str(a)): s for u, a, s in score_rows}
    with pipeline.engine.connect() as conn:
        keys = {e["INPUTS_CAPTURED"]["snapshot"] for e in events.values()}
        rules = {e["INPUTS_CAPTURED"]["criteria"]["snapshot"] for e in events.values()}
        own = {e["INPUTS_CAPTURED"]["inputs"] for e in events.values()}
        shared = snapshots(conn, keys | rules | own)
    # One market snapshot per calculation, shared by all its users; a criteria snapshot
    # per distinct rule set; an inputs snapshot per distinct set of a user's own inputs.
    assert len(keys) == 1 and set(shared) == keys | rules | own
    assert {shared[k]["rules"] and k for k in rules} == rules
    assert {shared[k]["holdings"] and k for k in own} == own
    for user_id, user_events in events.items():
        captured = user_events["INPUTS_CAPTURED"]
        doc = self_contained(captured, shared)
        # Replaying the captured inputs reproduces the stored and the event scores exactly.
        assert captured["format"] == 5  # only references: the user's own inputs a snapshot
        replayed = replay(doc)
        assert {a: s.score for a, s in replayed.items()} == {
            a: stored_scores[(user_id, a)] for a in replayed
        }
        # The event (format 3) with the snapshots gives the full per-rule view back.
        stored = user_events["SCORES_COMPUTED"]
        assert stored["format"] == 3
        full = full_scores(stored, captured, shared)
        assert [s.to_json() for s in full.values()] == [s.to_json() for s in replayed.values()]
        # The persisted recommendation is what the core computes from the same inputs.
        expected = one_user_recommendation(doc)
        payload = CachedRecommendations.model_validate(rows[user_id].payload)
        assert payload.user_id == user_id
        assert [(x.asset_id, x.amount) for x in payload.recommendations] == [
            (x.asset_id, x.amount) for x in expected.recommendations
        ]
        assert rows[user_id].total_investable == expected.contribution
        # The cache holds the same documents, for 24 hours.
        key = f"{pipeline.settings.cache_prefix}recs:{user_id}"
        cached = CachedRecommendations.model_validate_json(pipeline.redis.get(key))
        assert cached == payload
        assert 86_000 < pipeline.redis.ttl(key) <= 86_400
        summary = pipeline.redis.get(f"{pipeline.settings.cache_prefix}portfolio:{user_id}")
        CachedPortfolioSummary.model_validate_json(summary)
    assert not pipeline.redis.exists(f"{pipeline.settings.cache_prefix}recs:{BROKEN_USER}")


def test_running_a_partition_again_replaces_rows_and_records_a_new_calculation(
    pipeline: Pipeline,
) -> None:
    assert pipeline.run("B3", DAY).success
    first_cid = correlation_ids(pipeline)[-1]
    first = events_by_user(pipeline, first_cid)
    key = f"{pipeline.settings.cache_prefix}recs:{next(iter(first))}"
    first_generated = orjson.loads(pipeline.redis.get(key))["generatedAt"]

    assert pipeline.run("B3", DAY).success
    second_cid = correlation_ids(pipeline)[-1]
    assert second_cid != first_cid
    second = events_by_user(pipeline, second_cid)
    assert set(second) == set(first)
    assert all(len(e) == 4 for e in second.values())

    r = recommendations_table
    with pipeline.engine.connect() as conn:
        counts = Counter(
            conn.execute(select(r.c.user_id).where(r.c.market_date == DAY, r.c.market == "B3"))
            .scalars()
            .all()
        )
        owners = set(
            conn.scalars(
                select(r.c.correlation_id).where(r.c.market_date == DAY, r.c.market == "B3")
            )
        )
    assert set(counts) == set(second) and set(counts.values()) == {1}
    assert owners == {second_cid}
    assert orjson.loads(pipeline.redis.get(key))["generatedAt"] > first_generated


def test_a_backfill_of_an_older_date_leaves_a_newer_cache_entry_alone(pipeline: Pipeline) -> None:
    assert pipeline.run("LSE", DAY).success
    users = events_by_user(pipeline, correlation_ids(pipeline)[-1])
    key = f"{pipeline.settings.cache_prefix}recs:{next(iter(users))}"
    newer = pipeline.redis.get(key)

    older_day = DAY - timedelta(days=1)
    result = pipeline.run("LSE", older_day)
    assert result.success
    cache_meta = next(
        ev.materialization.metadata
        for ev in result.get_asset_materialization_events()
        if ev.asset_key.to_user_string() == "recommendation_cache"
    )
    assert cache_meta["written"].value == 0
    assert cache_meta["kept_newer"].value == len(users)
    assert pipeline.redis.get(key) == newer
    # The older date's recommendations are still persisted for the record.
    r = recommendations_table
    with pipeline.engine.connect() as conn:
        assert conn.scalar(
            select(func.count()).where(r.c.market_date == older_day, r.c.market == "LSE")
        ) == len(users)


def test_all_calculations_for_an_asset_come_newest_first(pipeline: Pipeline) -> None:
    assert pipeline.run("XETRA", DAY).success
    assert pipeline.run("XETRA", DAY).success
    first, second = correlation_ids(pipeline)[-2:]
    scores = events_by_user(pipeline, second)
    user_id, user_events = next(iter(scores.items()))
    # SCORES_COMPUTED row 0 scores INPUTS_CAPTURED's holding 0 (format 5: the holdings are
    # in the inputs snapshot it references).
    captured = user_events["INPUTS_CAPTURED"]
    with pipeline.engine.connect() as conn:
        shared = snapshots(conn, snapshot_keys(captured))
    asset_id = uuid.UUID(holding_assets(captured, shared)[0])
    with pipeline.engine.connect() as conn:
        symbol = conn.scalar(select(assets_table.c.symbol).where(assets_table.c.id == asset_id))
        found = calculations_for_asset(conn, asset_id=asset_id, user_id=user_id, limit=10)
    assert symbol
    assert [c.correlation_id for c in found][:2] == [second, first]


def test_the_assets_are_module_level_and_materialise_with_plain_resources(
    pipeline: Pipeline,
) -> None:
    """What a Dagster engineer does first with someone else's assets: import them and
    `materialize` them with resources, no job and no definitions object."""
    from dagster import materialize

    from overnight_pipeline.defs.assets import (
        asset_fundamentals,
        asset_prices,
        exchange_rates,
        scores_and_recommendations,
    )
    from overnight_pipeline.defs.partitions import partition_key
    from overnight_pipeline.defs.resources import resources_from
    from overnight_pipeline.defs.shards import ShardPlanIOManager

    result = materialize(
        [exchange_rates, asset_prices, asset_fundamentals, scores_and_recommendations],
        partition_key=partition_key("LSE", DAY),
        resources={
            **resources_from(pipeline.settings, env_vars=False),
            "shard_plan_io_manager": ShardPlanIOManager(),
        },
        run_config={
            "ops": {
                "scores_and_recommendations": {"ops": {"plan_shards": {"config": {"shards": 3}}}}
            }
        },
    )
    assert result.success
    meta = {
        e.asset_key.to_user_string(): e.materialization.metadata
        for e in result.get_asset_materialization_events()
    }
    assert meta["recommendations"]["shards"].value == 3
    assert (
        meta["recommendations"]["users_succeeded"].value
        == meta["asset_scores"]["users_total"].value
        > 0
    )
