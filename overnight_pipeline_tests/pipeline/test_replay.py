"""`replay_sample` on `SCORES_COMPUTED`: new events replay exactly, events of formats 2
and 1 still replay, and an event that was altered or garbled is reported, naming the user."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine, select

from overnight_pipeline.core.captured_reader import self_contained, snapshot_keys
from overnight_pipeline.core.scored import full_scores
from overnight_pipeline.core.scoring import replay
from overnight_pipeline.steps.calculation import score_and_recommend
from overnight_pipeline.steps.replay import replay_sample
from overnight_pipeline.storage.events import snapshots
from overnight_pipeline.storage.models import calculation_events_table
from overnight_pipeline_tests.core.documents import compact_scores
from overnight_pipeline_tests.support.priced import DAY, KW, priced_nyse_engine


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield from priced_nyse_engine("overnight_replay", users=8, seed_value=11)


def calculate(engine: Engine) -> uuid.UUID:
    """A new calculation of the partition (it becomes the users' current one)."""
    cid = uuid.uuid4()
    report = score_and_recommend(
        engine, correlation_id=cid, calculated_at=datetime.now(UTC), run_id="r", **KW
    )
    assert report.users_succeeded == report.users_total > 0
    return cid


def events(engine: Engine, cid: uuid.UUID, kind: str) -> dict[str, Any]:
    e = calculation_events_table.c
    with engine.connect() as conn:
        rows = conn.execute(
            select(e.user_id, e.payload).where(e.correlation_id == cid, e.event_type == kind)
        )
        return {str(u): p for u, p in rows}


def rewrite(engine: Engine, cid: uuid.UUID, user: str, payload: Any) -> None:
    e = calculation_events_table
    with engine.begin() as conn:
        conn.execute(
            e.update()
            .where(
                e.c.correlation_id == cid,
                e.c.user_id == uuid.UUID(user),
                e.c.event_type == "SCORES_COMPUTED",
            )
            .values(payload=payload)
        )


def as_format_1(engine: Engine, cid: uuid.UUID) -> dict[str, dict[str, Any]]:
    """Each user's SCORES_COMPUTED as the code before format 2 wrote it, from the full view."""
    captured, shared = inputs(engine, cid)
    return {
        uid: {
            "criteriaVersion": captured[uid]["criteria"]["version"],
            "scores": [s.to_json() for s in full_scores(payload, captured[uid], shared).values()],
        }
        for uid, payload in events(engine, cid, "SCORES_COMPUTED").items()
    }


def inputs(engine: Engine, cid: uuid.UUID) -> tuple[dict[str, Any], dict[str, Any]]:
    """Each user's INPUTS_CAPTURED, and the snapshots they reference."""
    captured = events(engine, cid, "INPUTS_CAPTURED")
    with engine.connect() as conn:
        keys = {key for doc in captured.values() for key in snapshot_keys(doc)}
        return captured, snapshots(conn, keys)


def test_new_events_replay_exactly_and_hold_the_full_view(engine: Engine) -> None:
    cid = calculate(engine)
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert len(outcome.checked) == outcome.users > 0 and outcome.mismatches == []
    captured, shared = inputs(engine, cid)
    for uid, payload in events(engine, cid, "SCORES_COMPUTED").items():
        assert payload["format"] == 3
        doc = captured[uid]
        # Format 5 (only references: the market, criteria and the user's own inputs
        # snapshots): `replay` reads it with what it references put back.
        assert doc["format"] == 5 and "snapshot" in doc["criteria"] and doc["inputs"] in shared
        assert full_scores(payload, doc, shared) == replay(self_contained(doc, shared))


def test_events_of_format_2_still_replay_and_a_changed_maximum_is_found(engine: Engine) -> None:
    cid = calculate(engine)
    captured, shared = inputs(engine, cid)
    old = {
        uid: compact_scores(
            captured[uid]["criteria"]["version"],
            [s.to_json() for s in full_scores(payload, captured[uid], shared).values()],
            format=2,
        )
        for uid, payload in events(engine, cid, "SCORES_COMPUTED").items()
    }
    for uid, payload in old.items():
        rewrite(engine, cid, uid, payload)
    assert events(engine, cid, "SCORES_COMPUTED") == old
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert outcome.checked and outcome.mismatches == []
    # Format 2 says the maximum itself: one changed is found.
    uid, changed = next((u, copy.deepcopy(p)) for u, p in old.items() if p["scores"])
    changed["scores"][0][1] = "999.0000"
    rewrite(engine, cid, uid, changed)
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert outcome.mismatches == [
        {"user": uid, "what": "SCORES_COMPUTED differs from the replayed scores"}
    ]


def test_events_of_format_1_still_replay_and_a_changed_actual_value_is_found(
    engine: Engine,
) -> None:
    cid = calculate(engine)
    old = as_format_1(engine, cid)
    for uid, payload in old.items():
        rewrite(engine, cid, uid, payload)
    assert events(engine, cid, "SCORES_COMPUTED") == old
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert outcome.checked and outcome.mismatches == []
    # One user's old event now claims another value seen by a rule.
    uid, payload = next(
        (u, p)
        for u, p in old.items()
        if any(r["actualValue"] for s in p["scores"] for r in s["breakdown"])
    )
    changed = copy.deepcopy(payload)
    rule = next(r for s in changed["scores"] for r in s["breakdown"] if r["actualValue"])
    rule["actualValue"] = rule["actualValue"] + "1"
    rewrite(engine, cid, uid, changed)
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert outcome.mismatches == [
        {"user": uid, "what": "SCORES_COMPUTED differs from the replayed scores"}
    ]


def _first_rule(doc: dict[str, Any]) -> list[Any]:
    return next(row for asset in doc["scores"] for row in asset[-1])  # the breakdown, last


def _flip_matched(doc: dict[str, Any]) -> None:
    rule = _first_rule(doc)
    rule[1] = not rule[1]


def _points_plus_one(doc: dict[str, Any]) -> None:
    _first_rule(doc)[2] += 1


def _matched_as_number(doc: dict[str, Any]) -> None:
    rule = _first_rule(doc)
    rule[1] = int(rule[1])  # 1 == True in Python, not in JSON


def _points_as_float(doc: dict[str, Any]) -> None:
    rule = _first_rule(doc)
    rule[2] = float(rule[2])


def _score_other_digits(doc: dict[str, Any]) -> None:
    doc["scores"][0][0] = doc["scores"][0][0].rstrip("0")  # the same value, other text


def _rule_dropped(doc: dict[str, Any]) -> None:
    asset = next(a for a in doc["scores"] if a[-1])
    asset[-1].pop()
    if len(asset) == 5:  # format 2 counts them
        asset[2] -= 1


def _assets_swapped(doc: dict[str, Any]) -> None:
    doc["scores"][:2] = doc["scores"][1::-1]


def _skip_reason_cleared(doc: dict[str, Any]) -> None:
    rule = next((r for a in doc["scores"] for r in a[-1] if r[3]), None)
    if rule is None:
        pytest.skip("no skipped rule in this seed")
    rule[3] = None


TAMPERED: dict[str, Callable[[dict[str, Any]], None]] = {
    "matched flipped": _flip_matched,
    "points changed": _points_plus_one,
    "matched as 1": _matched_as_number,
    "points as 5.0": _points_as_float,
    "score 12.0000 as 12.": _score_other_digits,
    "a rule dropped": _rule_dropped,
    "two assets swapped": _assets_swapped,
    "skip reason cleared": _skip_reason_cleared,
}


@pytest.mark.parametrize("tamper", TAMPERED.values(), ids=TAMPERED.keys())
def test_an_altered_event_of_the_written_format_is_found(
    engine: Engine, tamper: Callable[[dict[str, Any]], None]
) -> None:
    cid = calculate(engine)
    scored = events(engine, cid, "SCORES_COMPUTED")
    uid = next(u for u, p in sorted(scored.items()) if len(p["scores"]) > 1)
    changed = copy.deepcopy(scored[uid])
    tamper(changed)
    assert changed != scored[uid] or tamper in (_matched_as_number, _points_as_float)
    rewrite(engine, cid, uid, changed)
    assert events(engine, cid, "SCORES_COMPUTED")[uid] == changed
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert outcome.mismatches == [
        {"user": uid, "what": "SCORES_COMPUTED differs from the replayed scores"}
    ]


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        (
            {"format": 9, "scores": []},
            "SCORES_COMPUTED format: must be 2 or 3, or absent for format 1",
        ),
        (["not", "an", "object"], "SCORES_COMPUTED payload: must be a JSON object"),
        ("text", "SCORES_COMPUTED payload: must be a JSON object"),
    ],
)
def test_a_garbled_event_is_reported_naming_the_field(
    engine: Engine, payload: Any, what: str
) -> None:
    cid = calculate(engine)
    uid = sorted(events(engine, cid, "SCORES_COMPUTED"))[0]
    rewrite(engine, cid, uid, payload)
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert [m["user"] for m in outcome.mismatches] == [uid]
    assert outcome.mismatches[0]["what"].startswith(what)


def test_a_missing_event_is_reported(engine: Engine) -> None:
    cid = calculate(engine)
    uid = sorted(events(engine, cid, "SCORES_COMPUTED"))[0]
    e = calculation_events_table
    with engine.begin() as conn:
        conn.execute(
            e.delete().where(
                e.c.correlation_id == cid,
                e.c.user_id == uuid.UUID(uid),
                e.c.event_type == "SCORES_COMPUTED",
            )
        )
    outcome = replay_sample(engine, correlation_id=cid, day=DAY)
    assert outcome.mismatches == [{"user": uid, "what": "no SCORES_COMPUTED event"}]
