"""The replay of a calculation (the `replay_matches` check, docs/EVENTS.md Replay): a sample
of its users recomputed from their `INPUTS_CAPTURED` and compared with what the run stored."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import Engine

from overnight_pipeline.core.audit import INPUTS_CAPTURED, SCORES_COMPUTED
from overnight_pipeline.core.batch import BatchScores, recommend_batch, score_batch
from overnight_pipeline.core.captured_reader import batch_from_captured, snapshot_keys
from overnight_pipeline.core.payloads import cache_payloads
from overnight_pipeline.core.recommendations import UserRecommendations
from overnight_pipeline.core.scored import (
    ScoresPayloadError,
    no_scores,
    payload_format,
    same_document,
    score_json,
)
from overnight_pipeline.core.snapshots import snapshot_hash
from overnight_pipeline.storage.events import event_payloads, snapshots
from overnight_pipeline.storage.results import (
    recommendations_for,
    scores_of,
    users_with_recommendation,
)

Captured = list[tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class ReplayOutcome:
    """What replaying a sample of a calculation's users from their events found."""

    users: int  # users with a recommendation row under the calculation
    checked: list[str]
    mismatches: list[dict[str, str]]  # user, what differs


@dataclass(frozen=True)
class _Stored:
    """What the calculation stored for the users of the sample."""

    correlation_id: uuid.UUID
    users: list[str]
    chosen: list[str]
    captured: Captured
    scored: dict[str, Any]
    scores: dict[str, tuple[set[uuid.UUID], dict[str, tuple[Decimal, Decimal]]]]
    rows: dict[str, Any]
    shared: dict[str, dict[str, Any]]


@dataclass
class _Findings:
    mismatches: list[dict[str, str]] = field(default_factory=list)

    def differs(self, uid: str, what: str) -> None:
        self.mismatches.append({"user": uid, "what": what})


def replay_sample(
    engine: Engine, *, correlation_id: uuid.UUID, day: date, sample_size: int = 25
) -> ReplayOutcome:
    """Recompute a sample of the calculation's users from their `INPUTS_CAPTURED` (and the
    snapshot it references, whose content must still hash to its key) and compare with
    what the run stored: the `SCORES_COMPUTED` payload, the `asset_scores` rows while they
    are the calculation's (a later calculation of the user replaces them) and the
    persisted recommendation row (both documents, to the cent). The sample is drawn by the
    correlation id, so re-evaluating a calculation checks the same users."""
    stored = _read(engine, correlation_id=correlation_id, day=day, sample_size=sample_size)
    found = _Findings()
    captured = _readable(stored, found)
    if captured:
        _compare(stored, captured, found)
    return ReplayOutcome(
        users=len(stored.users), checked=stored.chosen, mismatches=found.mismatches
    )


def _read(engine: Engine, *, correlation_id: uuid.UUID, day: date, sample_size: int) -> _Stored:
    with engine.connect() as conn:
        users = sorted(users_with_recommendation(conn, correlation_id=correlation_id, day=day))
        chosen = sorted(
            random.Random(correlation_id.int).sample(users, min(sample_size, len(users)))
        )
        ids = [uuid.UUID(u) for u in chosen]
        captured = event_payloads(
            conn, correlation_id=correlation_id, event_type=INPUTS_CAPTURED, user_ids=ids
        )
        scored = dict(
            event_payloads(
                conn, correlation_id=correlation_id, event_type=SCORES_COMPUTED, user_ids=ids
            )
        )
        return _Stored(
            correlation_id=correlation_id,
            users=users,
            chosen=chosen,
            captured=captured,
            scored=scored,
            scores=scores_of(conn, user_ids=ids),
            rows={str(r.user_id): r for r in recommendations_for(conn, user_ids=ids, day=day)},
            shared=snapshots(conn, {key for _, d in captured for key in snapshot_keys(d)}),
        )


def _readable(stored: _Stored, found: _Findings) -> Captured:
    """The sampled users' `INPUTS_CAPTURED` whose snapshots are all there, unchanged."""
    for uid in sorted(set(stored.chosen) - {uid for uid, _ in stored.captured}):
        found.differs(uid, "no INPUTS_CAPTURED event")
    readable = []
    for uid, doc in stored.captured:
        problems = [
            f"the snapshot {key} is missing"
            if key not in stored.shared
            else f"the snapshot {key} no longer hashes to its key"
            for key in snapshot_keys(doc)
            if key not in stored.shared or snapshot_hash(stored.shared[key]) != key
        ]
        for problem in problems:
            found.differs(uid, problem)
        if not problems:
            readable.append((uid, doc))
    return readable


def _compare(stored: _Stored, captured: Captured, found: _Findings) -> None:
    """Recompute the users of `captured` and compare each with what was stored."""
    batch, fx = batch_from_captured(captured, stored.shared)
    versions = {uid: doc["criteria"]["version"] for uid, doc in captured}
    scores = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    recs, failures = recommend_batch(batch, scores, fx)
    expected = _expected_scores(stored, captured, scores, versions, found)
    replayed: dict[str, dict[str, tuple[Decimal, Decimal]]] = {}
    for uid, aid, score, top in zip(
        scores.holdings["user_id"].tolist(),
        scores.holdings["asset_id"].tolist(),
        scores.holdings["score"].tolist(),
        scores.holdings["max_possible_score"].tolist(),
        strict=True,
    ):
        replayed.setdefault(uid, {})[aid] = (Decimal(score), Decimal(top))
    counts = batch.holdings.groupby("user_id").size().to_dict()
    for uid, _doc in captured:
        if uid in expected and not same_document(stored.scored[uid], expected[uid]):
            found.differs(uid, "SCORES_COMPUTED differs from the replayed scores")
        calculations, current = stored.scores.get(uid, (set(), {}))
        superseded = bool(calculations) and stored.correlation_id not in calculations
        if not superseded and replayed.get(uid, {}) != current:
            found.differs(uid, "asset_scores rows differ from the replayed scores")
        _compare_row(stored, uid, recs.get(uid), failures.get(uid), int(counts.get(uid, 0)), found)


def _expected_scores(
    stored: _Stored,
    captured: Captured,
    scores: BatchScores,
    versions: dict[str, Any],
    found: _Findings,
) -> dict[str, Any]:
    """The replayed `SCORES_COMPUTED` of each user whose stored event can be read, written
    in that event's own format: events written before format 2 stay checkable."""
    formats: dict[str, int] = {}
    for uid, _doc in captured:
        if uid not in stored.scored:
            found.differs(uid, "no SCORES_COMPUTED event")
            continue
        try:
            formats[uid] = payload_format(stored.scored[uid])
        except ScoresPayloadError as exc:
            found.differs(uid, str(exc))
    texts = {f: score_json(scores, versions, format=f) for f in set(formats.values())}
    expected: dict[str, Any] = {}
    for uid, fmt in formats.items():
        payload = texts[fmt].payloads.get(uid)
        expected[uid] = (
            no_scores(versions[uid], format=fmt) if payload is None else orjson.loads(payload)
        )
    return expected


def _compare_row(
    stored: _Stored,
    uid: str,
    rec: UserRecommendations | None,
    failure: Exception | None,
    asset_count: int,
    found: _Findings,
) -> None:
    """The user's persisted recommendation row against the replayed recommendations."""
    row = stored.rows.get(uid)
    if rec is None or row is None:
        found.differs(uid, f"no recommendation replayed or stored ({failure})")
        return
    payload_doc, portfolio_doc = cache_payloads(
        uuid.UUID(uid),
        rec,
        generated_at=datetime.fromisoformat(row.payload["generatedAt"]),
        asset_count=asset_count,
    )
    if payload_doc.model_dump(mode="json", by_alias=True) != row.payload:
        found.differs(uid, "the recommendations row differs from the replayed recommendations")
    if portfolio_doc.model_dump(mode="json", by_alias=True) != row.portfolio:
        found.differs(uid, "the portfolio document differs from the replayed one")
