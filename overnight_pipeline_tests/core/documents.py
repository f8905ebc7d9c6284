"""The dict builders of the event documents: the reference `capture_json` (core.captured_writer) and
`score_json` (core.scored) are tested against, written plainly, one dict per user and per
holding."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import date
from decimal import Decimal
from typing import Any

import pandas as pd

from overnight_pipeline.core.batch import Batch, BatchScores
from overnight_pipeline.core.batch.arrays import is_null as _null
from overnight_pipeline.core.captured_text import iso_text as _iso
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.vocabulary import METRICS


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


def capture(
    batch: Batch,
    fx: FxRates,
    *,
    market: str,
    market_date: date,
    criteria_versions: Mapping[Any, int | None],
    holding_markets: Sequence[str] | None = None,
) -> dict[Any, dict[str, Any]]:
    """One `INPUTS_CAPTURED` payload per user of `batch` (fundamentals from its frame)."""
    fundamentals = batch.fundamentals
    assert isinstance(fundamentals, pd.DataFrame), "capture needs the fundamentals frame"
    docs: dict[Any, dict[str, Any]] = {}
    for uid, base, contribution in zip(
        batch.users["user_id"].tolist(),
        batch.users["base_currency"].tolist(),
        batch.users["contribution"].tolist(),
        strict=True,
    ):
        docs[uid] = {
            "market": market,
            "marketDate": market_date.isoformat(),
            "baseCurrency": base,
            "contribution": None if _null(contribution) else _s(contribution),
            "criteria": {"version": criteria_versions.get(uid), "rules": []},
            "assetClasses": [],
            "holdings": [],
            "rates": {},
            "fundamentals": {},
        }
    for uid, name, lo, hi, max_assets, min_value in zip(
        *(
            batch.classes[c].tolist()
            for c in (
                "user_id",
                "name",
                "target_min",
                "target_max",
                "max_assets",
                "min_allocation_value",
            )
        ),
        strict=True,
    ):
        docs[uid]["assetClasses"].append(
            {
                "name": name,
                "targetMin": _s(lo),
                "targetMax": _s(hi),
                "maxAssets": None if _null(max_assets) else int(max_assets),
                "minAllocationValue": None if _null(min_value) else _s(min_value),
            }
        )
    metrics_of: dict[Any, set[str]] = {}
    r = batch.rules
    for uid, rid, cls, metric, op, v, v2, points in zip(
        *(
            r[c].tolist()
            for c in (
                "user_id",
                "id",
                "asset_class",
                "metric",
                "operator",
                "value",
                "value2",
                "points",
            )
        ),
        strict=True,
    ):
        rule: dict[str, Any] = {
            "id": rid,
            "assetClass": cls,
            "metric": metric,
            "operator": op,
            "points": int(points),
        }
        if not _null(v):
            rule["value"] = _s(v)
        if not _null(v2):
            rule["value2"] = _s(v2)
        docs[uid]["criteria"]["rules"].append(rule)
        metrics_of.setdefault(uid, set()).add(metric)
    h = batch.holdings
    markets = holding_markets if holding_markets is not None else [None] * len(h)
    # Each asset's metrics as strings, formatted once however many users hold it.
    f_text: dict[Any, dict[str, str | None]] = {
        aid: {m: None if _null(v) else _s(v) for m, v in zip(METRICS, row, strict=True)}
        for aid, row in zip(
            fundamentals.index.tolist(),
            fundamentals.reindex(columns=list(METRICS)).to_numpy(dtype=object).tolist(),
            strict=True,
        )
    }
    no_values: dict[str, str | None] = dict.fromkeys(METRICS)
    sorted_metrics = {uid: sorted(ms) for uid, ms in metrics_of.items()}
    needed: dict[Any, set[str]] = {}
    for uid, aid, sym, cls, qty, cur, price, as_of, mkt in zip(
        *(
            h[c].tolist()
            for c in (
                "user_id",
                "asset_id",
                "symbol",
                "asset_class",
                "quantity",
                "currency",
                "price",
                "price_as_of",
            )
        ),
        markets,
        strict=True,
    ):
        doc = docs[uid]
        doc["holdings"].append(
            {
                "assetId": aid,
                "symbol": sym,
                "market": mkt,
                "assetClass": cls,
                "quantity": _s(qty),
                "currency": cur,
                "price": None if _null(price) else _s(price),
                "priceAsOf": None if _null(as_of) else _iso(as_of),
            }
        )
        needed.setdefault(uid, set()).update({cur, doc["baseCurrency"]})
        values = f_text.get(aid, no_values)
        doc["fundamentals"][aid] = {m: values[m] for m in sorted_metrics.get(uid, ())}
    for uid, doc in docs.items():
        currencies = needed.get(uid, {doc["baseCurrency"]})
        doc["rates"] = {
            "asOf": _iso(fx.as_of),
            "stale": fx.stale,
            "usdTo": {c: _s(fx.usd_to[c]) for c in sorted(currencies) if c in fx.usd_to},
        }
    return docs


def score_documents(scores: BatchScores) -> list[dict[str, Any]]:
    """`AssetScore.to_json()` for every holding row of a scored batch, from its frames."""
    b = scores.breakdown
    rules: list[list[dict[str, Any]]] = [[] for _ in range(len(scores.holdings))]
    for h, cid, matched, points, actual, skipped in zip(
        b["holding"].tolist(),
        b["criterion_id"].tolist(),
        b["matched"].tolist(),
        b["points_awarded"].tolist(),
        b["actual_value"].tolist(),
        b["skipped_reason"].tolist(),
        strict=True,
    ):
        rules[h].append(
            {
                "criterionId": cid,
                "matched": matched,
                "pointsAwarded": points,
                "actualValue": None if actual is None else format(actual, "f"),
                "skippedReason": skipped,
            }
        )
    s = scores.holdings
    return [
        {
            "assetId": aid,
            "score": format(score, "f"),
            "maxPossibleScore": format(top_score, "f"),
            "criteriaCount": count,
            "topContributor": top,
            "breakdown": rules[i],
        }
        for i, (aid, score, top_score, count, top) in enumerate(
            zip(
                s["asset_id"].tolist(),
                s["score"].tolist(),
                s["max_possible_score"].tolist(),
                s["criteria_count"].tolist(),
                s["top_contributor"].tolist(),
                strict=True,
            )
        )
    ]


def compact_scores(
    criteria_version: int | None, entries: list[dict[str, Any]], *, format: int = 3
) -> dict[str, Any]:
    """`SCORES_COMPUTED` of format 2 from the full entries (`score_documents`, in holding
    order): the same facts as column lists, without `assetId` (the row's holding names it)
    and `actualValue`; format 3: of each entry its score and breakdown rows only."""
    if format == 3:
        return {
            "format": 3,
            "scores": [
                [
                    e["score"],
                    [
                        [b["criterionId"], b["matched"], b["pointsAwarded"], b["skippedReason"]]
                        for b in e["breakdown"]
                    ],
                ]
                for e in entries
            ],
        }
    return {
        "format": 2,
        "criteriaVersion": criteria_version,
        "columns": ["score", "maxPossibleScore", "criteriaCount", "topContributor", "breakdown"],
        "breakdownColumns": ["criterionId", "matched", "pointsAwarded", "skippedReason"],
        "scores": [
            [
                e["score"],
                e["maxPossibleScore"],
                e["criteriaCount"],
                e["topContributor"],
                [
                    [b["criterionId"], b["matched"], b["pointsAwarded"], b["skippedReason"]]
                    for b in e["breakdown"]
                ],
            ]
            for e in entries
        ],
    }
