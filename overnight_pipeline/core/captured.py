"""`INPUTS_CAPTURED`: everything a user's calculation depends on, as one JSON document.

The pipeline writes it before scoring and computes the recommendations from it, so what is
persisted is by construction a function of what was captured (SPEC §4); `scoring.replay`
recomputes the scores from the same document. Decimals are strings; fundamentals are kept
for the metrics the user's rules read (a metric no rule reads cannot change the result),
nulls included.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
import pandas as pd

from overnight_pipeline.core.batch import Batch, BatchScores
from overnight_pipeline.core.money import FxRates, parse_decimal
from overnight_pipeline.core.vocabulary import METRICS


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


class _Decimals(dict[str, Decimal]):
    """Decimals of the strings of one call: captured documents repeat the same strings (an
    asset's fundamentals for each holder, round quantities), each is parsed once. Per call,
    so memory stays bounded by the batch (a process-wide cache filled up at ≈ 7,000 users
    and then missed on nearly every value)."""

    def get_decimal(self, value: Any, name: str) -> Decimal | None:
        if value is None:
            return None
        found = self.get(value)
        if found is None:
            found = self[value] = self._parse(value, name)
        return found

    @staticmethod
    def _parse(value: Any, name: str) -> Decimal:
        if type(value) is str:
            try:
                found = Decimal(value)
            except ArithmeticError:
                pass
            else:
                if found.is_finite():
                    return found
        return parse_decimal(value, field_name=name)  # the error, or a non-str value


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


def batch_from_captured(items: Iterable[tuple[Any, Mapping[str, Any]]]) -> tuple[Batch, FxRates]:
    """The batch (and the union of the captured rates) that the payloads describe."""
    users, classes, holdings, rules = [], [], [], []
    fundamentals: dict[str, dict[str, Decimal | None]] = {}
    usd_to: dict[str, Decimal] = {}
    as_of: datetime | None = None
    stale = False
    versions: dict[Any, int | None] = {}
    decimals = _Decimals()
    _d = decimals.get_decimal
    stamps: dict[str, datetime] = {}
    # What each asset's fundamentals were parsed from: holders of an asset repeat its text.
    parsed_from: dict[str, dict[str, Any]] = {}
    for uid, doc in items:
        versions[uid] = doc["criteria"]["version"]
        users.append(
            (
                uid,
                doc["baseCurrency"],
                _d(doc["contribution"], "contribution"),
                doc["criteria"]["version"],
            )
        )
        for c in doc["assetClasses"]:
            classes.append(
                (
                    uid,
                    c["name"],
                    _d(c["targetMin"], "targetMin"),
                    _d(c["targetMax"], "targetMax"),
                    c["maxAssets"],
                    _d(c["minAllocationValue"], "minAllocationValue"),
                )
            )
        for h in doc["holdings"]:
            stamp = h["priceAsOf"]
            if stamp is not None:
                found = stamps.get(stamp)
                if found is None:
                    found = stamps[stamp] = datetime.fromisoformat(stamp)
                stamp = found
            holdings.append(
                (
                    uid,
                    h["assetId"],
                    h["symbol"],
                    h["assetClass"],
                    _d(h["quantity"], "quantity"),
                    h["currency"],
                    _d(h["price"], "price"),
                    stamp,
                )
            )
        for rule in doc["criteria"]["rules"]:
            rules.append(
                (
                    uid,
                    rule["id"],
                    rule["assetClass"],
                    rule["metric"],
                    rule["operator"],
                    _d(rule.get("value"), "value"),
                    _d(rule.get("value2"), "value2"),
                    int(rule["points"]),
                )
            )
        for aid, values in doc["fundamentals"].items():
            into = fundamentals.get(aid)
            if into is None:
                into = fundamentals[aid] = {}
                seen = parsed_from[aid] = {}
            else:
                seen = parsed_from[aid]
            for metric, v in values.items():
                if metric in seen and seen[metric] == v:
                    continue  # the same text: `into` holds its Decimal already
                seen[metric] = v
                into[metric] = _d(v, metric)
        rates = doc["rates"]
        for cur, v in rates.get("usdTo", {}).items():
            usd_to[cur] = parse_decimal(v, field_name=f"rates.usdTo.{cur}")
        if rates.get("asOf"):
            as_of = datetime.fromisoformat(rates["asOf"])
        stale = stale or bool(rates.get("stale"))

    def frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
        return pd.DataFrame(rows, columns=columns, dtype=object)

    fund = frame(
        [(a, *[v.get(m) for m in METRICS]) for a, v in fundamentals.items()], ["asset_id", *METRICS]
    ).set_index("asset_id")
    batch = Batch(
        users=frame(users, ["user_id", "base_currency", "contribution", "criteria_version"]),
        classes=frame(
            classes,
            ["user_id", "name", "target_min", "target_max", "max_assets", "min_allocation_value"],
        ),
        holdings=frame(
            holdings,
            [
                "user_id",
                "asset_id",
                "symbol",
                "asset_class",
                "quantity",
                "currency",
                "price",
                "price_as_of",
            ],
        ),
        rules=frame(
            rules,
            ["user_id", "id", "asset_class", "metric", "operator", "value", "value2", "points"],
        ),
        fundamentals=fund,
    )
    usd_to.pop("USD", None)
    return batch, FxRates(usd_to=usd_to, as_of=as_of, stale=stale)


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


# JSON text, built directly ------------------------------------------------------------------
#
# The pipeline writes ≈ 25 KB of these documents per user. Building them as nested dicts and
# serialising those cost more than everything else of the scoring step together, so the two
# functions below write the same documents straight as JSON text: each repeated fragment
# (an asset's holding fields, its fundamentals, a string's JSON form) is made once per call.
# `orjson.loads` of their output equals `capture(...)` / the `score_documents` of each user
# (tested); key order and whitespace differ from `orjson.dumps`, which jsonb ignores anyway.


class _JsonStrings(dict[Any, str]):
    """JSON text of strings (and null), each escaped once."""

    def __missing__(self, key: Any) -> str:
        text = "null" if _null(key) else orjson.dumps(key).decode()
        self[key] = text
        return text


def _q(value: Decimal | None) -> str:
    return "null" if _null(value) else '"' + format(value, "f") + '"'


def capture_json(
    batch: Batch,
    fx: FxRates,
    *,
    market: str,
    market_date: date,
    criteria_versions: Mapping[Any, int | None],
    holding_markets: Sequence[str | None] | None = None,
) -> dict[Any, tuple[str, int]]:
    """`capture` as JSON text: user id → (the document, its number of holdings)."""
    fundamentals = batch.fundamentals
    assert isinstance(fundamentals, pd.DataFrame), "capture needs the fundamentals frame"
    js = _JsonStrings()
    head = f'{{"market":{js[market]},"marketDate":"{market_date.isoformat()}","baseCurrency":'
    users = batch.users
    user_ids = users["user_id"].tolist()
    bases = dict(zip(user_ids, users["base_currency"].tolist(), strict=True))
    contributions = dict(zip(user_ids, users["contribution"].tolist(), strict=True))

    classes: dict[Any, list[str]] = {}
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
        classes.setdefault(uid, []).append(
            f'{{"name":{js[name]},"targetMin":{_q(lo)},"targetMax":{_q(hi)},'
            f'"maxAssets":{"null" if _null(max_assets) else int(max_assets)},'
            f'"minAllocationValue":{_q(min_value)}}}'
        )

    rules: dict[Any, list[str]] = {}
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
        text = (
            f'{{"id":{js[rid]},"assetClass":{js[cls]},"metric":{js[metric]},'
            f'"operator":{js[op]},"points":{int(points)}'
        )
        if not _null(v):
            text += f',"value":{_q(v)}'
        if not _null(v2):
            text += f',"value2":{_q(v2)}'
        rules.setdefault(uid, []).append(text + "}")
        metrics_of.setdefault(uid, set()).add(metric)

    # Each asset's `"metric":value` pairs, made once however many users hold it.
    f_pairs: dict[Any, dict[str, str]] = {
        aid: {m: f"{js[m]}:{_q(v)}" for m, v in zip(METRICS, row, strict=True)}
        for aid, row in zip(
            fundamentals.index.tolist(),
            fundamentals.reindex(columns=list(METRICS)).to_numpy(dtype=object).tolist(),
            strict=True,
        )
    }
    no_pairs = {m: f"{js[m]}:null" for m in METRICS}
    pick: dict[Any, Callable[[dict[str, str]], str]] = {}
    for uid, ms in metrics_of.items():
        pick[uid] = _picker(sorted(ms))

    h = batch.holdings
    markets = holding_markets if holding_markets is not None else [None] * len(h)
    # (holding text before the class, between class and quantity, after the quantity), per
    # distinct asset/price/market; objects are keyed by identity (all alive during the call).
    parts: dict[tuple[Any, ...], tuple[str, str]] = {}
    holdings: dict[Any, list[str]] = {}
    funds: dict[Any, dict[Any, str]] = {}
    needed: dict[Any, set[str]] = {}
    none_pick = _picker([])
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
        key = (aid, sym, mkt, cur, id(price), id(as_of))
        found = parts.get(key)
        if found is None:
            found = parts[key] = (
                f'{{"assetId":{js[aid]},"symbol":{js[sym]},"market":{js[mkt]},"assetClass":',
                f',"currency":{js[cur]},"price":{_q(price)},'
                f'"priceAsOf":{"null" if _null(as_of) else js[_iso(as_of)]}}}',
            )
        holdings.setdefault(uid, []).append(f'{found[0]}{js[cls]},"quantity":{_q(qty)}{found[1]}')
        seen = needed.get(uid)
        if seen is None:
            seen = needed[uid] = {bases[uid]}
        seen.add(cur)
        per_user = funds.get(uid)
        if per_user is None:
            per_user = funds[uid] = {}
        if aid not in per_user:
            per_user[aid] = pick.get(uid, none_pick)(f_pairs.get(aid, no_pairs))

    rates_head = (
        f'{{"asOf":{js[_iso(fx.as_of)]},"stale":{"true" if fx.stale else "false"},"usdTo":{{'
    )
    rates_of: dict[frozenset[str], str] = {}
    out: dict[Any, tuple[str, int]] = {}
    for uid in user_ids:
        base = bases[uid]
        currencies = frozenset(needed.get(uid, (base,)))
        rates = rates_of.get(currencies)
        if rates is None:
            rates = rates_of[currencies] = (
                rates_head
                + ",".join(
                    f"{js[c]}:{_q(fx.usd_to[c])}" for c in sorted(currencies) if c in fx.usd_to
                )
                + "}}"
            )
        contribution = contributions[uid]
        version = criteria_versions.get(uid)
        held = holdings.get(uid, [])
        out[uid] = (
            f'{head}{js[base]},"contribution":{_q(contribution)},'
            f'"criteria":{{"version":{"null" if version is None else int(version)},'
            f'"rules":[{",".join(rules.get(uid, ()))}]}},'
            f'"assetClasses":[{",".join(classes.get(uid, ()))}],'
            f'"holdings":[{",".join(held)}],"rates":{rates},'
            f'"fundamentals":{{{",".join(f"{js[a]}:{t}" for a, t in funds.get(uid, {}).items())}}}}}',
            len(held),
        )
    return out


def _picker(metrics: list[str]) -> Callable[[dict[str, str]], str]:
    """`{"m1":v1,…}` for `metrics` out of an asset's pairs."""
    if not metrics:
        return lambda _pairs: "{}"
    if len(metrics) == 1:
        only = metrics[0]
        return lambda pairs: "{" + pairs[only] + "}"
    get = itemgetter(*metrics)
    return lambda pairs: "{" + ",".join(get(pairs)) + "}"


@dataclass(frozen=True)
class ScoreTexts:
    """`SCORES_COMPUTED` payloads as JSON text, and per holding row of the scored batch
    what the `asset_scores` table keeps."""

    payloads: dict[Any, str]  # user id → {"criteriaVersion": …, "scores": […]}
    score: list[str]  # per holding row: score, max possible score (Decimal text)
    max_possible_score: list[str]
    summary: list[str]  # {"criteriaCount": n, "topContributor": …} as JSON text


def score_json(scores: BatchScores, criteria_versions: Mapping[Any, int | None]) -> ScoreTexts:
    """`SCORES_COMPUTED` of every user of a scored batch (the `score_documents` of its
    holdings, in order) as JSON text."""
    js = _JsonStrings()
    b = scores.breakdown
    decimals: dict[int, str] = {}  # by identity: score tables share their Decimal objects

    def dec(value: Decimal | None) -> str:
        if value is None:
            return "null"
        found = decimals.get(id(value))
        if found is None:
            found = decimals[id(value)] = _q(value)
        return found

    holding = b["holding"].to_numpy()
    frags = [
        f'{{"criterionId":{js[cid]},"matched":{"true" if matched else "false"},'
        f'"pointsAwarded":{points},"actualValue":{dec(actual)},"skippedReason":{js[skipped]}}}'
        for cid, matched, points, actual, skipped in zip(
            b["criterion_id"].tolist(),
            b["matched"].tolist(),
            b["points_awarded"].tolist(),
            b["actual_value"].tolist(),
            b["skipped_reason"].tolist(),
            strict=True,
        )
    ]
    s = scores.holdings
    n = len(s)
    bounds = np.searchsorted(holding, np.arange(n + 1)).tolist() if n else [0]
    per_user: dict[Any, list[str]] = {}
    score_text: list[str] = []
    max_text: list[str] = []
    summaries: list[str] = []
    summary_of: dict[tuple[int, Any], str] = {}
    for i, (uid, aid, score, top_score, count, top) in enumerate(
        zip(
            s["user_id"].tolist(),
            s["asset_id"].tolist(),
            s["score"].tolist(),
            s["max_possible_score"].tolist(),
            s["criteria_count"].tolist(),
            s["top_contributor"].tolist(),
            strict=True,
        )
    ):
        st, mt = dec(score), dec(top_score)
        summary = summary_of.get((count, top))
        if summary is None:
            summary = summary_of[(count, top)] = (
                f'{{"criteriaCount":{count},"topContributor":{js[top]}}}'
            )
        score_text.append(st[1:-1])
        max_text.append(mt[1:-1])
        summaries.append(summary)
        per_user.setdefault(uid, []).append(
            f'{{"assetId":{js[aid]},"score":{st},"maxPossibleScore":{mt},'
            f'{summary[1:-1]},"breakdown":[{",".join(frags[bounds[i] : bounds[i + 1]])}]}}'
        )
    payloads = {
        uid: f'{{"criteriaVersion":{_version(criteria_versions.get(uid))},'
        f'"scores":[{",".join(docs)}]}}'
        for uid, docs in per_user.items()
    }
    return ScoreTexts(payloads, score_text, max_text, summaries)


def _version(version: int | None) -> str:
    return "null" if version is None else str(int(version))
