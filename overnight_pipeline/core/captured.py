"""`INPUTS_CAPTURED`: everything a user's calculation depends on, as one JSON document.

The pipeline writes it before scoring and computes the recommendations from it, so what is
persisted is by construction a function of what was captured (SPEC §4); `scoring.replay`
recomputes the scores from the same document. Decimals are strings; fundamentals are kept
for the metrics the user's rules read (a metric no rule reads cannot change the result),
nulls included.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import pandas as pd

from overnight_pipeline.core.batch import Batch, BatchScores
from overnight_pipeline.core.money import FxRates, parse_decimal
from overnight_pipeline.core.vocabulary import METRICS


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


_PARSED: dict[str, Decimal] = {}


def _d(value: str | None, name: str) -> Decimal | None:
    # Captured documents repeat the same strings (an asset's fundamentals for each holder,
    # round quantities): parse each distinct one once. Decimals are immutable.
    if value is None:
        return None
    found = _PARSED.get(value)
    if found is None:
        found = parse_decimal(value, field_name=name)
        if len(_PARSED) < 200_000:
            _PARSED[value] = found
    return found


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def _null(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


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
        batch.users["user_id"].tolist(), batch.users["base_currency"].tolist(),
        batch.users["contribution"].tolist(), strict=True,
    ):  # fmt: skip
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
        *(batch.classes[c].tolist() for c in ("user_id", "name", "target_min", "target_max",
                                              "max_assets", "min_allocation_value")),
        strict=True,
    ):  # fmt: skip
        docs[uid]["assetClasses"].append({
            "name": name, "targetMin": _s(lo), "targetMax": _s(hi),
            "maxAssets": None if _null(max_assets) else int(max_assets),
            "minAllocationValue": None if _null(min_value) else _s(min_value),
        })  # fmt: skip
    metrics_of: dict[Any, set[str]] = {}
    r = batch.rules
    for uid, rid, cls, metric, op, v, v2, points in zip(
        *(r[c].tolist() for c in ("user_id", "id", "asset_class", "metric", "operator", "value",
                                  "value2", "points")),
        strict=True,
    ):  # fmt: skip
        rule: dict[str, Any] = {"id": rid, "assetClass": cls, "metric": metric, "operator": op,
                                "points": int(points)}  # fmt: skip
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
        *(h[c].tolist() for c in ("user_id", "asset_id", "symbol", "asset_class", "quantity",
                                  "currency", "price", "price_as_of")),
        markets, strict=True,
    ):  # fmt: skip
        doc = docs[uid]
        doc["holdings"].append({
            "assetId": aid, "symbol": sym, "market": mkt, "assetClass": cls,
            "quantity": _s(qty), "currency": cur,
            "price": None if _null(price) else _s(price),
            "priceAsOf": None if _null(as_of) else _iso(as_of),
        })  # fmt: skip
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


def batch_from_captured(items: Iterable[tuple[Any, Mapping[str, Any]]]) -> tuple[Batch, FxRates]:
    """The batch (and the union of the captured rates) that the payloads describe."""
    users, classes, holdings, rules = [], [], [], []
    fundamentals: dict[str, dict[str, Decimal | None]] = {}
    usd_to: dict[str, Decimal] = {}
    as_of: datetime | None = None
    stale = False
    versions: dict[Any, int | None] = {}
    for uid, doc in items:
        versions[uid] = doc["criteria"]["version"]
        users.append((uid, doc["baseCurrency"], _d(doc["contribution"], "contribution"),
                      doc["criteria"]["version"]))  # fmt: skip
        for c in doc["assetClasses"]:
            classes.append((uid, c["name"], _d(c["targetMin"], "targetMin"),
                            _d(c["targetMax"], "targetMax"), c["maxAssets"],
                            _d(c["minAllocationValue"], "minAllocationValue")))  # fmt: skip
        for h in doc["holdings"]:
            holdings.append((uid, h["assetId"], h["symbol"], h["assetClass"],
                             _d(h["quantity"], "quantity"), h["currency"],
                             _d(h["price"], "price"),
                             None if h["priceAsOf"] is None else
                             datetime.fromisoformat(h["priceAsOf"])))  # fmt: skip
        for rule in doc["criteria"]["rules"]:
            rules.append((uid, rule["id"], rule["assetClass"], rule["metric"], rule["operator"],
                          _d(rule.get("value"), "value"), _d(rule.get("value2"), "value2"),
                          int(rule["points"])))  # fmt: skip
        for aid, values in doc["fundamentals"].items():
            into = fundamentals.setdefault(aid, {})
            for metric, v in values.items():
                into[metric] = _d(v, metric)
        rates = doc["rates"]
        for cur, v in rates.get("usdTo", {}).items():
            usd_to[cur] = parse_decimal(v, field_name=f"rates.usdTo.{cur}")
        if rates.get("asOf"):
            as_of = datetime.fromisoformat(rates["asOf"])
        stale = stale or bool(rates.get("stale"))

    def frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=columns, dtype=object)

    fund = frame([(a, *[v.get(m) for m in METRICS]) for a, v in fundamentals.items()],
                 ["asset_id", *METRICS]).set_index("asset_id")  # fmt: skip
    batch = Batch(
        users=frame(users, ["user_id", "base_currency", "contribution", "criteria_version"]),
        classes=frame(classes, ["user_id", "name", "target_min", "target_max", "max_assets",
                                "min_allocation_value"]),
        holdings=frame(holdings, ["user_id", "asset_id", "symbol", "asset_class", "quantity",
                                  "currency", "price", "price_as_of"]),
        rules=frame(rules, ["user_id", "id", "asset_class", "metric", "operator", "value",
                            "value2", "points"]),
        fundamentals=fund,
    )  # fmt: skip
    usd_to.pop("USD", None)
    return batch, FxRates(usd_to=usd_to, as_of=as_of, stale=stale)


def score_documents(scores: BatchScores) -> list[dict[str, Any]]:
    """`AssetScore.to_json()` for every holding row of a scored batch, from its frames."""
    b = scores.breakdown
    rules: list[list[dict[str, Any]]] = [[] for _ in range(len(scores.holdings))]
    for h, cid, matched, points, actual, skipped in zip(
        b["holding"].tolist(), b["criterion_id"].tolist(), b["matched"].tolist(),
        b["points_awarded"].tolist(), b["actual_value"].tolist(), b["skipped_reason"].tolist(),
        strict=True,
    ):  # fmt: skip
        rules[h].append({"criterionId": cid, "matched": matched, "pointsAwarded": points,
                         "actualValue": None if actual is None else format(actual, "f"),
                         "skippedReason": skipped})  # fmt: skip
    s = scores.holdings
    return [
        {"assetId": aid, "score": format(score, "f"), "maxPossibleScore": format(top_score, "f"),
         "criteriaCount": count, "topContributor": top, "breakdown": rules[i]}
        for i, (aid, score, top_score, count, top) in enumerate(zip(
            s["asset_id"].tolist(), s["score"].tolist(), s["max_possible_score"].tolist(),
            s["criteria_count"].tolist(), s["top_contributor"].tolist(), strict=True,
        ))
    ]  # fmt: skip
