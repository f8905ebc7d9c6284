"""One loaded batch of a calculation computed into what it writes: scores, recommendations
and each user's events (`core.audit`), in one transaction."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import orjson
import pandas as pd
from sqlalchemy import Connection

from overnight_pipeline.core import audit
from overnight_pipeline.core.batch import Batch, BatchScores, recommend_batch, score_batch
from overnight_pipeline.core.batch.arrays import present, run_codes
from overnight_pipeline.core.cache_documents import cache_documents
from overnight_pipeline.core.captured_writer import capture_json
from overnight_pipeline.core.money import FxRates, MissingRateError
from overnight_pipeline.core.recommendations import UserRecommendations
from overnight_pipeline.core.scored import ScoreTexts, no_scores, score_json
from overnight_pipeline.core.snapshots import criteria_snapshots, inputs_snapshots
from overnight_pipeline.steps.batches import Write
from overnight_pipeline.storage.batches import LoadedBatch
from overnight_pipeline.storage.bulk import write_rows
from overnight_pipeline.storage.cache_entries import CacheEntry
from overnight_pipeline.storage.events import EventColumns, batch_event_rows, insert_snapshots
from overnight_pipeline.storage.recommendations import (
    TOTAL_SCALE,
    RecommendationRow,
    recommendation_rows,
    write_recommendations,
)
from overnight_pipeline.storage.results import (
    calculation_asset_rows,
)
from overnight_pipeline.storage.scores import ScoreColumns, user_score_rows, write_scores

_NO_USER = object()


@dataclass(frozen=True)
class Calculation:
    """What every batch of one shard step shares."""

    dialect: str
    market: str
    day: date
    correlation_id: uuid.UUID
    calculated_at: datetime
    run_id: str
    fx: FxRates
    snapshot: str  # the hash of the market snapshot the users are priced from
    positions: Mapping[str, int]  # asset id → its row in that snapshot (INPUTS_CAPTURED 4)


@dataclass(frozen=True)
class BatchResult:
    """A computed batch: its writes (one transaction) and what it counts for the report."""

    write: Write
    succeeded: int
    failed: int
    assets_scored: int
    recommendations: int
    unallocated_users: int
    failures: list[dict[str, str]]
    cache_entries: list[CacheEntry]


@dataclass
class _Users:
    """The batch's users as they are computed: their events (columns of JSON text,
    `storage.events.EventColumns`), recommendation rows and failures, in order."""

    calc: Calculation
    now: datetime
    texts: audit.PayloadTexts
    events: EventColumns
    rec_rows: list[RecommendationRow] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    recommendations: int = 0
    unallocated_users: int = 0

    def valued(
        self,
        uid: str,
        *,
        version: int | None,
        captured: tuple[str, int],
        scores: str,
        rec: UserRecommendations | None,
        error: str,
    ) -> None:
        """A user whose inputs were captured (`captured`: its `INPUTS_CAPTURED` and number
        of holdings): four events, and a recommendation row unless the recommendations
        failed."""
        document, holdings = captured
        if rec is None:
            completed = self.texts.failed(stage="recommendations", error=error)
            self.failures.append({"user": uid, "stage": "recommendations", "error": error})
        else:
            self.rec_rows.append(_recommendation_row(uid, rec, self.calc, self.now, holdings))
            completed = self.texts.completed(rec)
            self.recommendations += len(rec.recommendations)
            self.unallocated_users += rec.unallocated > 0
        self.events.add(
            uid,
            audit.VALUED_EVENTS,
            (self.texts.started(version, holdings), document, scores, completed),
        )

    def unvalued(self, uid: str, *, version: int | None, error: str) -> None:
        """A user whose inputs cannot be valued: `CALC_STARTED` and a failed
        `CALC_COMPLETED`."""
        self.events.add(
            uid,
            audit.UNVALUED_EVENTS,
            (self.texts.started(version), self.texts.failed(stage="inputs", error=error)),
        )
        self.failures.append({"user": uid, "stage": "inputs", "error": error})


def process_batch(
    loaded: LoadedBatch, chunk: Sequence[uuid.UUID], calc: Calculation
) -> BatchResult:
    """Compute one loaded batch (scores, recommendations, events) into the writes of its
    results (one transaction)."""
    now = datetime.now(UTC)
    failed = _rate_failures(loaded.batch, calc.fx)
    ok = {str(u) for u in chunk} - set(failed)
    batch, holding_markets = (
        _valued(loaded, ok) if failed else (loaded.batch, loaded.holding_markets)
    )
    versions = loaded.criteria_versions
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recommended, rec_failures = recommend_batch(batch, scored, calc.fx)
    texts = score_json(scored, versions)
    criteria_keys, criteria_payloads = criteria_snapshots(batch)
    own_keys, own_payloads = inputs_snapshots(batch)
    captured = capture_json(
        batch,
        calc.fx,
        market=calc.market,
        market_date=calc.day,
        criteria_versions=versions,
        holding_markets=holding_markets,
        snapshot=calc.snapshot,
        criteria=criteria_keys,
        positions=calc.positions,
        inputs=own_keys,
    )
    score_rows, asset_rows = _score_rows(scored, holding_markets, texts)
    users = _Users(
        calc,
        now,
        audit.PayloadTexts(market=calc.market, day=calc.day, run_id=calc.run_id),
        EventColumns(calc.correlation_id),
    )
    valued = sorted(ok)
    for uid in valued:
        version = versions.get(uid)
        users.valued(
            uid,
            version=version,
            captured=captured[uid],
            scores=texts.payloads.get(uid) or orjson.dumps(no_scores(version)).decode(),
            rec=recommended.get(uid),
            error=str(rec_failures.get(uid, "no result")),
        )
    for uid, error in sorted(failed.items()):
        users.unvalued(uid, version=versions.get(uid), error=error)
    write = _writes(
        calc,
        now,
        score_rows=score_rows,
        asset_rows=asset_rows,
        users=users,
        versions={u: versions.get(u) or 0 for u in valued},
        criteria_payloads=criteria_payloads,
        inputs_payloads=own_payloads,
    )
    return BatchResult(
        write=write,
        succeeded=len(users.rec_rows),
        failed=len(chunk) - len(users.rec_rows),
        assets_scored=len(score_rows.user_ids),
        recommendations=users.recommendations,
        unallocated_users=users.unallocated_users,
        failures=users.failures,
        cache_entries=[_cache_entry(row) for row in users.rec_rows],
    )


def _valued(loaded: LoadedBatch, ok: set[str]) -> tuple[Batch, list[str]]:
    """The batch without the users who cannot be valued, and its holdings' markets."""
    holding_markets = [
        m
        for m, uid in zip(loaded.holding_markets, loaded.batch.holdings["user_id"], strict=True)
        if uid in ok
    ]
    return _subset(loaded.batch, ok), holding_markets


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
    """Users who cannot be valued: a priced holding or the base has no rate. Each distinct
    (currency, base) pair of priced holdings is asked once; a failing user keeps the error of
    its first failing holding."""
    h = batch.holdings
    if not len(h):
        return {}
    base = dict(
        zip(batch.users["user_id"].tolist(), batch.users["base_currency"].tolist(), strict=True)
    )
    uids = h["user_id"].to_numpy(dtype=object)
    users: dict[Any, int] = {}
    user_code = run_codes(uids, users, grow=True)
    currencies: dict[Any, int] = {}
    cur_code = run_codes(h["currency"].to_numpy(dtype=object), currencies, grow=True)
    priced = present(h["price"].to_numpy(dtype=object))
    bases = [base.get(u, _NO_USER) for u in users]
    if _NO_USER in bases:  # a priced holding of a user missing from `users`
        for i in np.flatnonzero(priced).tolist():
            if bases[user_code[i]] is _NO_USER:
                raise KeyError(uids[i])
    base_values: dict[Any, int] = {}
    base_code = np.array(
        [base_values.setdefault(b, len(base_values)) for b in bases], dtype=np.int64
    )
    pair = cur_code * len(base_values) + base_code[user_code]
    cur_list, base_list = list(currencies), list(base_values)
    errors: dict[int, str] = {}
    for key in np.unique(pair[priced]).tolist():
        cur, b = divmod(key, len(base_values))
        try:
            fx.rate(cur_list[cur], base_list[b])
        except MissingRateError as exc:
            if message := str(exc):
                errors[key] = message
    failed: dict[str, str] = {}
    if errors:
        bad = priced & np.isin(pair, list(errors))
        for i in np.flatnonzero(bad).tolist():
            failed.setdefault(uids[i], errors[int(pair[i])])
    return failed


def _score_rows(
    scored: BatchScores,
    holding_markets: Sequence[str],
    texts: ScoreTexts,
) -> tuple[ScoreColumns, list[tuple[str, str, str]]]:
    """The `user_scores` and `calculation_assets` rows of the batch's holdings. The per-rule
    breakdown is in SCORES_COMPUTED (the audit trail); the table keeps the summary the
    dashboard and SQL users read."""
    uids = scored.holdings["user_id"].tolist()
    aids = scored.holdings["asset_id"].tolist()
    columns = ScoreColumns(
        uids, aids, holding_markets, texts.score, texts.max_possible_score, texts.summary
    )
    if len({len(c) for c in columns}) > 1:
        raise ValueError("score rows: columns of different lengths")
    return columns, list(zip(aids, uids, texts.score, strict=True))


def _recommendation_row(
    uid: str, rec: UserRecommendations, calc: Calculation, now: datetime, asset_count: int
) -> RecommendationRow:
    """The user's `recommendations` row: both documents the cache and the dashboard serve."""
    user_id = uuid.UUID(uid)
    recs, portfolio = cache_documents(user_id, rec, generated_at=now, asset_count=asset_count)
    return RecommendationRow(
        user_id=user_id,
        market_date=calc.day,
        market=calc.market,
        correlation_id=calc.correlation_id,
        generated_at=now,
        base_currency=rec.base_currency,
        total_investable=rec.contribution,
        criteria_version=rec.criteria_version,
        payload=recs,
        portfolio=portfolio,
    )


def _cache_entry(row: RecommendationRow) -> CacheEntry:
    """The user's cache entry, as the cache step would read it back from the row (the
    total at the column's scale)."""
    return CacheEntry(
        user_id=row.user_id,
        market_date=row.market_date,
        generated_at=row.generated_at,
        recs_json=row.payload,
        portfolio_json=row.portfolio,
        total_investable=row.total_investable.quantize(TOTAL_SCALE),
    )


def _writes(
    calc: Calculation,
    now: datetime,
    *,
    score_rows: ScoreColumns,
    asset_rows: list[tuple[str, str, str]],
    users: _Users,
    versions: dict[str, int],
    criteria_payloads: Mapping[str, Any],
    inputs_payloads: Mapping[str, Any],
) -> Write:
    """The batch's writes, its rows formatted here, not on the writer thread: this thread
    would otherwise wait for it."""
    scores = user_score_rows(
        calc.dialect,
        score_rows,
        versions=versions,
        day=calc.day,
        correlation_id=calc.correlation_id,
        computed_at=now,
    )
    rows = [
        calculation_asset_rows(
            calc.dialect,
            asset_rows,
            correlation_id=calc.correlation_id,
            calculated_at=calc.calculated_at,
        ),
        batch_event_rows(calc.dialect, users.events, at=now, calculated_at=calc.calculated_at),
    ]
    recommendations = recommendation_rows(calc.dialect, users.rec_rows)

    def write(conn: Connection) -> None:
        # Before the events that reference them, in their transaction.
        insert_snapshots(
            conn, kind="criteria", payloads=criteria_payloads, calculated_at=calc.calculated_at
        )
        insert_snapshots(
            conn, kind="inputs", payloads=inputs_payloads, calculated_at=calc.calculated_at
        )
        write_scores(conn, scores)
        for prepared in rows:
            write_rows(conn, prepared)
        write_recommendations(conn, recommendations)

    return write
