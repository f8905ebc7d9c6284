"""`SCORES_COMPUTED`: each user's scores as the run computed them, written and read back.

Format 3 (`"format": 3`, written since issue 25) keeps what the rules decided and nothing
that follows from it: per holding its score and one breakdown row per applicable rule,

    {"format": 3,
     "scores": [["12.0000", [["dy", true, 12, null], ["pe", false, 0, "missing_fundamental"]]]]}

Row i scores holding i of the same calculation's `INPUTS_CAPTURED`, as in format 2. What
format 2 also said is derived from these rows and the user's criteria rules (`full_scores`
puts it back): `criteriaCount` is the number of breakdown rows, `maxPossibleScore` the sum
of the positive points of their rules, `topContributor` the metric of the matched rule with
the most points (the first on a tie), `criteriaVersion` is `INPUTS_CAPTURED`'s, and the
column names are the format's.

Format 2 (`"format": 2`, written from issue 15 to issue 25) says each fact once, as column lists:

    {"format": 2, "criteriaVersion": 3,
     "columns": ["score", "maxPossibleScore", "criteriaCount", "topContributor", "breakdown"],
     "breakdownColumns": ["criterionId", "matched", "pointsAwarded", "skippedReason"],
     "scores": [["12.0000", "20.0000", 2, "dividend_yield",
                 [["dy", true, 12, null], ["pe", false, 0, "missing_fundamental"]]]]}

Row i scores the user's holding i: the i-th row of the same calculation's `INPUTS_CAPTURED`
holdings, which names the asset (the asset ids are said once: 30 of them, 36 characters
each and incompressible, were half the stored bytes of the event). One breakdown row per
applicable rule in document order. A rule's `actualValue` is not repeated: it is the asset's value of the rule's metric
in the market snapshot referenced by the user's `INPUTS_CAPTURED` (null when the rule was
skipped); `full_scores` puts it back. Format 1 (no `format` key, written before) is
`{"criteriaVersion", "scores": [AssetScore.to_json(), ...]}`. All three are read, and
written (the replay writes each stored event's own format).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from itertools import pairwise
from typing import Any

import numpy as np
import orjson
import pandas as pd

from overnight_pipeline.core.batch import BatchScores
from overnight_pipeline.core.captured_reader import self_contained, snapshot_keys
from overnight_pipeline.core.money import parse_decimal
from overnight_pipeline.core.scored_text import format_3_texts
from overnight_pipeline.core.scoring import SCORE_PLACES, AssetScore, RuleOutcome

SCORES_FORMAT = 3
FORMATS = (1, 2, 3)
SCORE_COLUMNS = ("score", "maxPossibleScore", "criteriaCount", "topContributor", "breakdown")
FORMAT_1_COLUMNS = ("assetId", *SCORE_COLUMNS)
BREAKDOWN_COLUMNS = ("criterionId", "matched", "pointsAwarded", "skippedReason")


class ScoresPayloadError(ValueError):
    """A `SCORES_COMPUTED` payload that is neither of its formats: names the field and the
    value found there."""

    def __init__(self, field: str, problem: str, value: Any) -> None:
        self.field, self.problem, self.value = field, problem, value
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        super().__init__(f"SCORES_COMPUTED {field}: {problem} (got {shown})")


# Writing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScoreTexts:
    """`SCORES_COMPUTED` payloads as JSON text, and per holding row of the scored batch
    what the `asset_scores` table keeps."""

    payloads: dict[Any, str]  # user id → the user's document
    score: list[str]  # per holding row: score, max possible score (Decimal text)
    max_possible_score: list[str]
    summary: list[str]  # {"criteriaCount": n, "topContributor": …} as JSON text


def _made_once(keys: np.ndarray, make: Callable[[int], str]) -> list[str]:
    """`make(i)` for every position i, made once per distinct key (at its first position)."""
    codes, made = _codes_and_texts(keys, make)
    texts: list[str] = np.array(made, dtype=object)[codes].tolist()
    return texts


def _codes_and_texts(keys: np.ndarray, make: Callable[[int], str]) -> tuple[np.ndarray, list[str]]:
    """A code per position (its key's, in order of first appearance) and `make(i)` of each
    code's first position i."""
    if not len(keys):
        return np.empty(0, dtype=np.int64), []
    codes, uniques = pd.factorize(keys)
    first = np.full(len(uniques), len(keys), dtype=np.int64)
    np.minimum.at(first, codes, np.arange(len(keys)))  # not a sort, as np.unique's is
    return codes, [make(i) for i in first.tolist()]


def _decimal_codes(values: list[Any]) -> tuple[np.ndarray, list[str]]:
    """`format(d, "f")` of each distinct Decimal and a code per value, by object: the scored
    frame shares one Decimal per distinct score (by identity, never by value: 1.0 == 1.00
    but their texts differ)."""
    ids = np.fromiter(map(id, values), dtype=np.int64, count=len(values))
    return _codes_and_texts(ids, lambda i: format(values[i], "f"))


def _decimal_texts(values: list[Any]) -> list[str]:
    """`format(d, "f")` of each Decimal (`_decimal_codes`)."""
    codes, made = _decimal_codes(values)
    texts: list[str] = np.array(made, dtype=object)[codes].tolist()
    return texts


def score_json(
    scores: BatchScores,
    criteria_versions: Mapping[Any, int | None],
    *,
    format: int = SCORES_FORMAT,
) -> ScoreTexts:
    """`SCORES_COMPUTED` of every user of a scored batch as JSON text, in `format` (3; 2 and
    1 are the shapes written before, for replaying them: 1 is `AssetScore.to_json()` of each
    holding)."""
    if format not in FORMATS:
        raise ValueError(f"format: SCORES_COMPUTED has formats 1, 2 and 3, not {format!r}")
    s = scores.holdings
    n = len(s)
    score_codes, score_made = _decimal_codes(s["score"].tolist())
    score_text: list[str] = np.array(score_made, dtype=object)[score_codes].tolist()
    max_text = _decimal_texts(s["max_possible_score"].tolist())
    counts = s["criteria_count"].tolist()
    tops = s["top_contributor"].tolist()
    top_codes, top_names = pd.factorize(s["top_contributor"].to_numpy(dtype=object))
    summaries = _made_once(
        s["criteria_count"].to_numpy(dtype=np.int64) * (len(top_names) + 1) + top_codes + 1,
        lambda i: orjson.dumps({"criteriaCount": counts[i], "topContributor": tops[i]}).decode(),
    )

    users, spans, order = _user_spans(s["user_id"].to_numpy(dtype=object))
    b = scores.breakdown
    if format == 3 and order is None:
        made = format_3_texts(b, score_codes, score_made, users, spans)
        if made is not None:
            return ScoreTexts(made, score_text, max_text, summaries)
    columns = [
        b["criterion_id"].tolist(),
        b["matched"].tolist(),
        b["points_awarded"].tolist(),
        b["skipped_reason"].tolist(),
    ]
    bounds = np.searchsorted(b["holding"].to_numpy(), np.arange(n + 1)).tolist() if n else [0]
    rows: list[Any] = (
        _format_1_rules(columns, b["actual_value"].tolist())
        if format == 1
        else list(zip(*columns, strict=True))
    )
    starts, ends = bounds[:-1], bounds[1:]
    per_holding = [s["asset_id"].tolist(), score_text, max_text, counts, tops, starts, ends]
    if order is not None:  # a user's rows apart: put them together
        per_holding = [[values[i] for i in order] for values in per_holding]
    aids, sts, mts, cs, ts, los, his = per_holding

    # Each user's rows are made and serialised at once, so that the lists die young: made
    # for the whole batch first, they set off the collector's full passes (several times the
    # CPU per user: docs/PERFORMANCE.md, "Figures once quoted in the code"). The rule rows
    # are tuples of strings, numbers and None, which the collector stops tracking at its
    # first pass.
    payloads = {}
    for uid, (a, z) in zip(users, pairwise(spans), strict=True):
        # Each holding's rule rows: slices of `rows` made by C-level maps, a fifth of the
        # loop's time as a comprehension.
        breakdowns = list(map(rows.__getitem__, map(slice, los[a:z], his[a:z])))
        if format == 3:
            payloads[uid] = orjson.dumps(
                {"format": 3, "scores": list(zip(sts[a:z], breakdowns, strict=True))}
            ).decode()
            continue
        version = criteria_versions.get(uid)
        version = None if version is None else int(version)
        heads = zip(sts[a:z], mts[a:z], cs[a:z], ts[a:z], breakdowns, strict=True)
        doc: dict[str, Any] = (
            {
                "format": 2,
                "criteriaVersion": version,
                "columns": SCORE_COLUMNS,
                "breakdownColumns": BREAKDOWN_COLUMNS,
                "scores": list(heads),
            }
            if format == 2
            else {
                "criteriaVersion": version,
                "scores": [
                    dict(zip(FORMAT_1_COLUMNS, (aid, *head), strict=True))
                    for aid, head in zip(aids[a:z], heads, strict=True)
                ],
            }
        )
        payloads[uid] = orjson.dumps(doc).decode()
    return ScoreTexts(payloads, score_text, max_text, summaries)


def no_scores(criteria_version: int | None, *, format: int = SCORES_FORMAT) -> dict[str, Any]:
    """The `SCORES_COMPUTED` document of a user without holdings (nothing scored)."""
    if format == 1:
        return {"criteriaVersion": criteria_version, "scores": []}
    if format == 3:
        return {"format": 3, "scores": []}
    return {
        "format": 2,
        "criteriaVersion": criteria_version,
        "columns": list(SCORE_COLUMNS),
        "breakdownColumns": list(BREAKDOWN_COLUMNS),
        "scores": [],
    }


def _format_1_rules(columns: list[list[Any]], actual: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "criterionId": cid,
            "matched": bool(matched),
            "pointsAwarded": points,
            "actualValue": None if value is None else format(value, "f"),
            "skippedReason": skipped,
        }
        for cid, matched, points, skipped, value in zip(*columns, actual, strict=True)
    ]


def _user_spans(user_ids: np.ndarray) -> tuple[list[Any], list[int], list[int] | None]:
    """The users of the holding rows (in order of first appearance), where each one's rows
    start and end, and the order that puts each user's rows together (None when they are
    already, as in the pipeline's batches)."""
    if not len(user_ids):
        return [], [0], None
    change = np.ones(len(user_ids), dtype=bool)
    np.not_equal(user_ids[1:], user_ids[:-1], out=change[1:])
    heads = np.flatnonzero(change)
    users = user_ids[heads].tolist()
    if len(set(users)) == len(users):  # each user's rows together: neighbours told them
        return users, [*heads.tolist(), len(user_ids)], None
    codes, uniques = pd.factorize(user_ids)
    order = None
    if not bool((codes[1:] >= codes[:-1]).all()):
        permutation = np.argsort(codes, kind="stable")
        codes, order = codes[permutation], permutation.tolist()
    spans = np.searchsorted(codes, np.arange(len(uniques) + 1)).tolist()
    return uniques.tolist(), spans, order


# Reading --------------------------------------------------------------------------------


def payload_format(payload: Any) -> int:
    """The format of a `SCORES_COMPUTED` payload (1, 2 or 3); a payload that is none of
    them raises `ScoresPayloadError`."""
    if not isinstance(payload, Mapping):
        raise ScoresPayloadError("payload", "must be a JSON object", payload)
    found = payload.get("format", 1)
    if type(found) is not int or found not in FORMATS:
        raise ScoresPayloadError("format", "must be 2 or 3, or absent for format 1", found)
    return found


def same_document(stored: Any, expected: Any) -> bool:
    """Whether two JSON documents are the same JSON whatever their key order (jsonb keeps
    its own): types count, `1` is not `true` and `5.0` is not `5`."""
    try:
        return orjson.dumps(stored, option=orjson.OPT_SORT_KEYS) == orjson.dumps(
            expected, option=orjson.OPT_SORT_KEYS
        )
    except orjson.JSONEncodeError:  # not JSON orjson writes (an integer beyond 64 bits)
        return False


def full_scores(
    payload: Any,
    inputs_captured: Mapping[str, Any],
    snapshots: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, AssetScore]:
    """The scores a `SCORES_COMPUTED` payload (any format) records, in full: per asset
    (formats 2 and 3: the asset of the same row of the holdings) every applicable rule with
    its metric and `actualValue`, read from the user's `INPUTS_CAPTURED` of the same
    calculation and the snapshots it references (`snapshots`: hash → payload, as
    `storage.events.snapshots` returns them); format 3's maximum and top contributor
    derived from the rules. `AssetScore.to_json()` of each is the format-1 entry;
    `scoring.replay` of the same inputs gives equal objects when nothing was altered."""
    fmt = payload_format(payload)
    missing = [k for k in snapshot_keys(inputs_captured) if snapshots is None or k not in snapshots]
    if missing:
        raise ValueError(f"full_scores needs the snapshot {', '.join(missing)}")
    inputs = self_contained(inputs_captured, snapshots or {})
    metric_of = {r["id"]: r["metric"] for r in inputs["criteria"]["rules"]}
    points_of = {r["id"]: int(r["points"]) for r in inputs["criteria"]["rules"]}
    values: Mapping[str, Mapping[str, Any]] = inputs.get("fundamentals", {})
    listed, held = _score_rows(payload, fmt, inputs)
    out: dict[str, AssetScore] = {}
    for i, entry in enumerate(listed):
        where = f"scores[{i}]"
        row_asset = held[i] if fmt != 1 else None
        aid, score, top_score, top, breakdown = _score_head(entry, fmt, where, row_asset)
        fundamentals = values.get(aid, {})
        outcomes = tuple(
            _outcome(rule, fmt, f"{where}.breakdown[{j}]", metric_of, fundamentals)
            for j, rule in enumerate(breakdown)
        )
        if fmt == 3:
            top_score, top = _derived(outcomes, points_of)
        out[aid] = AssetScore(
            asset_id=aid,
            score=_decimal(score, f"{where}.score"),
            max_possible_score=_decimal(top_score, f"{where}.maxPossibleScore"),
            top_contributor=top,
            breakdown=outcomes,
        )
    return out


def _derived(outcomes: tuple[RuleOutcome, ...], points_of: Mapping[str, int]) -> tuple[str, Any]:
    """Format 3's maximum (as text) and top contributor, from the rules of the breakdown as
    `scoring.score_asset` computes them: the sum of their positive points, the metric of the
    matched rule with the most points (the first of equals)."""
    best: tuple[int, str] | None = None
    for o in outcomes:
        if o.matched and (best is None or points_of[o.criterion_id] > best[0]):
            best = (points_of[o.criterion_id], o.metric)
    most = sum(p for p in (points_of[o.criterion_id] for o in outcomes) if p > 0)
    return format(Decimal(most).quantize(SCORE_PLACES), "f"), None if best is None else best[1]


def _score_rows(
    payload: Mapping[str, Any], fmt: int, inputs: Mapping[str, Any]
) -> tuple[list[Any], list[Any]]:
    """The payload's `scores` list, its columns checked (format 2: one row per holding),
    and the asset ids of the holdings."""
    if fmt == 2:
        for name, expected in (("columns", SCORE_COLUMNS), ("breakdownColumns", BREAKDOWN_COLUMNS)):
            if payload.get(name) != list(expected):
                raise ScoresPayloadError(name, f"must be {list(expected)}", payload.get(name))
    listed = payload.get("scores")
    if not isinstance(listed, list):
        raise ScoresPayloadError("scores", "must be a list", listed)
    held = [h["assetId"] for h in inputs["holdings"]]
    if fmt != 1 and len(listed) != len(held):
        raise ScoresPayloadError(
            "scores", f"must have one row per holding of INPUTS_CAPTURED ({len(held)})", listed
        )
    return listed, held


def _score_head(
    entry: Any, fmt: int, where: str, row_asset: Any
) -> tuple[str, Any, Any, str | None, list[Any]]:
    """One asset's row checked: its asset id (formats 2 and 3: `row_asset`, the asset of the
    same row of the holdings), score and maximum (unparsed; format 3: none yet), top
    contributor (format 3: none yet) and breakdown."""
    if fmt == 3:
        if not isinstance(entry, list) or len(entry) != 2:
            raise ScoresPayloadError(where, "must be a list of 2 (score, breakdown)", entry)
        score, breakdown = entry
        _expect(isinstance(breakdown, list), f"{where}.breakdown", "must be a list", breakdown)
        return row_asset, score, "0", None, breakdown
    if fmt == 2:
        if not isinstance(entry, list) or len(entry) != len(SCORE_COLUMNS):
            raise ScoresPayloadError(where, f"must be a list of {len(SCORE_COLUMNS)}", entry)
        aid = row_asset
        score, top_score, count, top, breakdown = entry
    else:
        if not isinstance(entry, Mapping):
            raise ScoresPayloadError(where, "must be an object", entry)
        aid, score, top_score, count, top, breakdown = (entry.get(c) for c in FORMAT_1_COLUMNS)
    _expect(isinstance(aid, str), f"{where}.assetId", "must be a string", aid)
    _expect(isinstance(top, str | None), f"{where}.topContributor", "must be a string or null", top)
    _expect(isinstance(breakdown, list), f"{where}.breakdown", "must be a list", breakdown)
    _expect(
        type(count) is int and count == len(breakdown),
        f"{where}.criteriaCount",
        f"must be the number of breakdown rows ({len(breakdown)})",
        count,
    )
    return aid, score, top_score, top, breakdown


def _outcome(
    rule: Any,
    fmt: int,
    at: str,
    metric_of: Mapping[str, str],
    fundamentals: Mapping[str, Any],
) -> RuleOutcome:
    """One breakdown row checked, with its metric and `actualValue` put back (formats 2 and
    3: the asset's value of the metric in the captured inputs, null when skipped)."""
    if fmt != 1:
        if not isinstance(rule, list) or len(rule) != len(BREAKDOWN_COLUMNS):
            raise ScoresPayloadError(at, f"must be a list of {len(BREAKDOWN_COLUMNS)}", rule)
        cid, matched, points, skipped = rule
    else:
        if not isinstance(rule, Mapping):
            raise ScoresPayloadError(at, "must be an object", rule)
        cid, matched, points, skipped = (rule.get(c) for c in BREAKDOWN_COLUMNS)
    _expect(
        isinstance(cid, str) and cid in metric_of,
        f"{at}.criterionId",
        "must be the id of a rule of the user's criteria",
        cid,
    )
    _expect(type(matched) is bool, f"{at}.matched", "must be true or false", matched)
    _expect(type(points) is int, f"{at}.pointsAwarded", "must be an integer", points)
    _expect(
        isinstance(skipped, str | None), f"{at}.skippedReason", "must be a string or null", skipped
    )
    metric = metric_of[cid]
    if fmt != 1:
        actual = None if skipped is not None else fundamentals.get(metric)
    else:
        actual = rule.get("actualValue")
    return RuleOutcome(
        cid, metric, matched, points, _decimal_or_null(actual, f"{at}.actualValue"), skipped
    )


def _expect(ok: bool, field: str, problem: str, value: Any) -> None:
    if not ok:
        raise ScoresPayloadError(field, problem, value)


def _decimal_or_null(value: Any, field: str) -> Decimal | None:
    return None if value is None else _decimal(value, field)


def _decimal(value: Any, field: str) -> Decimal:
    if not isinstance(value, str):
        raise ScoresPayloadError(field, "must be a decimal string", value)
    try:
        return parse_decimal(value, field_name=field)
    except ValueError:
        raise ScoresPayloadError(field, "must be a finite decimal string", value) from None
