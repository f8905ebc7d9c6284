"""`INPUTS_CAPTURED`: everything a user's calculation depends on, as one JSON document.

The pipeline writes it in the same transaction as the user's scores and recommendations,
which it computes from the same in-memory batch; that what was captured is all they depend
on is proven by the tests and, on every run, by the `replay_matches` check
(`steps.replay.replay_sample`: a sample of users rebuilt from this document alone, compared with
what was stored). `scoring.replay` recomputes the scores from the same document. Decimals are strings; fundamentals are kept
for the metrics the user's rules read (a metric no rule reads cannot change the result),
nulls included.

Read back by `captured_reader`, which also says what the formats hold. Since revision
0003 (`"format": 2`) a calculation's market data is one snapshot (`market_snapshot`; the
snapshots' makers are in `core.snapshots`) that
each user's document references by its hash; format 3 references the user's criteria rules
too (`criteria_snapshots`); format 4 (issue 25) names each held asset by the position of its
row in that market snapshot instead of its 36-character id (`asset_positions`); format 5
(issue 25) references the user's own inputs too, an `inputs` snapshot (`inputs_snapshots`),
stored once a month while they do not change.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson
import pandas as pd

from overnight_pipeline.core.batch import HOLDING_COLUMNS, RULE_COLUMNS, Batch
from overnight_pipeline.core.batch.arrays import is_null
from overnight_pipeline.core.captured_text import (
    HOLDING_FIELDS,
    inputs_texts,
    iso_text,
    plain_texts,
    referencing_texts,
    texts_by_identity,
)
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.vocabulary import METRICS

# JSON text of the document -------------------------------------------------------------
#
# Format 3, what the pipeline writes every night, is assembled as text from the batch's
# columns (`core.captured_text`). The older formats, written for replays and the tests,
# `capture_json` builds from plain dicts and lists, serialised by orjson; what repeats (an
# asset's fundamentals for the same metrics, the rates of the same currencies, a Decimal's
# text) is made once per call and shared. `orjson.loads` of its
# output equals the documents of the dict builder in the tests (`capture` there). Each
# user's document is serialised as soon as it is made: dicts of strings only are not
# tracked by the garbage collector, but the lists holding them are, and a batch's worth
# kept alive doubled the cost. Faster than the f-string builder it replaced
# (`bench/json_bench.py`; docs/PERFORMANCE.md, "Figures once quoted in the code").
# `SCORES_COMPUTED` is built by `core.scored.score_json`.


def _rules_by_user(
    r: pd.DataFrame,
) -> tuple[dict[Any, list[dict[str, Any]]], dict[Any, set[str]]]:
    """Each user's rules as the documents keep them, and the metrics they read."""
    rules_of: dict[Any, list[dict[str, Any]]] = {}
    metrics_of: dict[Any, set[str]] = {}
    for uid, rid, cls, metric, op, v, v2, points in zip(
        *(r[c].tolist() for c in RULE_COLUMNS[:5]),
        plain_texts(r["value"].tolist()),
        plain_texts(r["value2"].tolist()),
        r["points"].tolist(),
        strict=True,
    ):
        rule: dict[str, Any] = {
            "id": rid,
            "assetClass": cls,
            "metric": metric,
            "operator": op,
            "points": int(points),
        }
        if v is not None:
            rule["value"] = v
        if v2 is not None:
            rule["value2"] = v2
        rules_of.setdefault(uid, []).append(rule)
        metrics_of.setdefault(uid, set()).add(metric)
    return rules_of, metrics_of


def capture_json(
    batch: Batch,
    fx: FxRates,
    *,
    market: str,
    market_date: date,
    criteria_versions: Mapping[Any, int | None],
    holding_markets: Sequence[str | None] | None = None,
    snapshot: str | None = None,
    criteria: Mapping[Any, str] | None = None,
    positions: Mapping[str, int] | None = None,
    inputs: Mapping[Any, str] | None = None,
) -> dict[Any, tuple[str, int]]:
    """`INPUTS_CAPTURED` of every user of `batch` as JSON text: user id → (the document, its
    number of holdings). With `snapshot` (the hash of the market snapshot the batch was
    priced from, `market_snapshot`), format 2: the user's own inputs and that reference;
    with `criteria` as well (user id → the hash of the user's `criteria_snapshots`), format
    3: the rules are referenced too (made as text from the columns, `core.captured_text`),
    and format 4 with `positions` (`asset_positions` of that snapshot) when the snapshot
    holds every asset of the batch: each asset named by its row's position there; with
    `inputs` as well (user id → the hash of the user's `inputs_snapshots`), format 5, only
    references (what the pipeline writes). Without a snapshot, the self-contained shape
    written before (fundamentals from the batch's frame)."""
    if snapshot is not None and criteria is not None and inputs is not None:
        counts = Counter(batch.holdings["user_id"].tolist())
        return inputs_texts(
            counts,
            market=market,
            market_date=market_date,
            criteria_versions=criteria_versions,
            snapshot=snapshot,
            criteria=criteria,
            inputs={uid: inputs[uid] for uid in batch.users["user_id"].tolist()},
        )
    if snapshot is not None and criteria is not None:
        return referencing_texts(
            batch,
            market=market,
            market_date=market_date,
            criteria_versions=criteria_versions,
            snapshot=snapshot,
            criteria=criteria,
            positions=positions,
        )
    fundamentals = batch.fundamentals
    assert isinstance(fundamentals, pd.DataFrame), "capture needs the fundamentals frame"
    text = texts_by_identity()
    users = batch.users
    user_ids = users["user_id"].tolist()
    bases = dict(zip(user_ids, users["base_currency"].tolist(), strict=True))
    contributions = dict(zip(user_ids, users["contribution"].tolist(), strict=True))
    classes_of = _classes_by_user(batch.classes, text)
    rules_of, metrics_of = _rules_by_user(batch.rules)
    holdings_of, funds_of, needed = _holdings_by_user(
        batch.holdings,
        holding_markets,
        _values_by_asset(fundamentals, text),
        {uid: tuple(sorted(ms)) for uid, ms in metrics_of.items()},
        bases,
        text,
        columns=snapshot is not None,
    )
    parts = _Parts(
        user_ids=user_ids,
        bases=bases,
        contributions=contributions,
        versions=criteria_versions,
        classes_of=classes_of,
        rules_of=rules_of,
        holdings_of=holdings_of,
        text=text,
        head={"market": market, "marketDate": market_date.isoformat()},
    )
    if snapshot is not None:
        return _referencing_json(parts, snapshot)
    return _self_contained_json(parts, fx, funds_of, needed)


@dataclass(frozen=True)
class _Parts:
    """What every document of a `capture_json` call is made of, by user id: plain lists and
    dicts of strings, numbers and None (untracked by the collector), and the call's texts."""

    user_ids: list[Any]
    bases: dict[Any, Any]
    contributions: dict[Any, Any]
    versions: Mapping[Any, int | None]
    classes_of: dict[Any, list[dict[str, Any]]]
    rules_of: dict[Any, list[dict[str, Any]]]
    holdings_of: dict[Any, list[Any]]
    text: Callable[[Any], str | None]
    head: dict[str, str]


def _classes_by_user(
    c: pd.DataFrame, text: Callable[[Any], str | None]
) -> dict[Any, list[dict[str, Any]]]:
    """Each user's asset classes as the documents keep them."""
    classes_of: dict[Any, list[dict[str, Any]]] = {}
    for uid, name, lo, hi, max_assets, min_value in zip(
        *(
            c[column].tolist()
            for column in (
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
        classes_of.setdefault(uid, []).append(
            {
                "name": name,
                "targetMin": text(lo),
                "targetMax": text(hi),
                "maxAssets": None if is_null(max_assets) else int(max_assets),
                "minAllocationValue": text(min_value),
            }
        )
    return classes_of


def _values_by_asset(
    fundamentals: pd.DataFrame, text: Callable[[Any], str | None]
) -> dict[Any, dict[str, str | None]]:
    """Each asset's metrics as text, made once per call."""
    return {
        aid: {m: text(v) for m, v in zip(METRICS, row, strict=True)}
        for aid, row in zip(
            fundamentals.index.tolist(),
            fundamentals.reindex(columns=list(METRICS)).to_numpy(dtype=object).tolist(),
            strict=True,
        )
    }


def _holdings_by_user(
    h: pd.DataFrame,
    holding_markets: Sequence[str | None] | None,
    values_of: dict[Any, dict[str, str | None]],
    sorted_metrics: dict[Any, tuple[str, ...]],
    bases: dict[Any, Any],
    text: Callable[[Any], str | None],
    *,
    columns: bool,
) -> tuple[dict[Any, list[Any]], dict[Any, dict[Any, dict[str, str | None]]], dict[Any, set[str]]]:
    """Each user's holdings (`columns`: as rows of `HOLDING_FIELDS`, else as dicts), and for
    the dicts the fundamentals the user's rules read of each asset held and the currencies
    the user's rates need. Each pick of an asset's metrics is made once per call."""
    no_values: dict[str, str | None] = dict.fromkeys(METRICS)
    picked: dict[tuple[Any, tuple[str, ...]], dict[str, str | None]] = {}
    stamp = texts_by_identity(datetime.isoformat)
    markets = holding_markets if holding_markets is not None else [None] * len(h)
    holdings_of: dict[Any, list[Any]] = {}
    funds_of: dict[Any, dict[Any, dict[str, str | None]]] = {}
    needed: dict[Any, set[str]] = {}
    for uid, aid, sym, cls, qty, cur, price, as_of, mkt in zip(
        *(h[c].tolist() for c in HOLDING_COLUMNS), markets, strict=True
    ):
        held = holdings_of.get(uid)
        if held is None:
            held = holdings_of[uid] = []
            needed[uid] = {bases[uid]}
            funds_of[uid] = {}
        if columns:
            held.append([aid, cls, text(qty)])
            continue
        held.append(
            {
                "assetId": aid,
                "symbol": sym,
                "market": mkt,
                "assetClass": cls,
                "quantity": text(qty),
                "currency": cur,
                "price": text(price),
                "priceAsOf": stamp(as_of),
            }
        )
        needed[uid].add(cur)
        funds = funds_of[uid]
        if aid not in funds:
            ms = sorted_metrics.get(uid, ())
            pick = picked.get((aid, ms))
            if pick is None:
                values = values_of.get(aid, no_values)
                pick = picked[(aid, ms)] = {m: values[m] for m in ms}
            funds[aid] = pick
    return holdings_of, funds_of, needed


def _referencing_json(parts: _Parts, snapshot: str) -> dict[Any, tuple[str, int]]:
    """Format 2: each user's own inputs and rules, and the market snapshot's hash."""
    bases, contributions, text = parts.bases, parts.contributions, parts.text
    criteria_versions, holdings_of = parts.versions, parts.holdings_of
    classes_of, rules_of, head = parts.classes_of, parts.rules_of, parts.head
    out: dict[Any, tuple[str, int]] = {}
    for uid in parts.user_ids:
        base = bases[uid]
        version = criteria_versions.get(uid)
        held = holdings_of.get(uid, [])
        out[uid] = (
            orjson.dumps(
                {
                    "format": 2,
                    **head,
                    "snapshot": snapshot,
                    "baseCurrency": base,
                    "contribution": text(contributions[uid]),
                    "criteria": {
                        "version": None if version is None else int(version),
                        "rules": rules_of.get(uid, []),
                    },
                    "assetClasses": classes_of.get(uid, []),
                    "holdings": {"columns": list(HOLDING_FIELDS), "rows": held},
                }
            ).decode(),
            len(held),
        )
    return out


def _self_contained_json(
    parts: _Parts,
    fx: FxRates,
    funds_of: dict[Any, dict[Any, dict[str, str | None]]],
    needed: dict[Any, set[str]],
) -> dict[Any, tuple[str, int]]:
    """Format 1: each user's market data in the document, the rates of its currencies."""
    bases, contributions, text = parts.bases, parts.contributions, parts.text
    criteria_versions, holdings_of = parts.versions, parts.holdings_of
    classes_of, rules_of, head = parts.classes_of, parts.rules_of, parts.head
    as_of_text = iso_text(fx.as_of)
    rates_of: dict[frozenset[str], dict[str, Any]] = {}
    out: dict[Any, tuple[str, int]] = {}
    for uid in parts.user_ids:
        base = bases[uid]
        version = criteria_versions.get(uid)
        held = holdings_of.get(uid, [])
        currencies = frozenset(needed.get(uid, (base,)))
        rates = rates_of.get(currencies)
        if rates is None:
            rates = rates_of[currencies] = {
                "asOf": as_of_text,
                "stale": fx.stale,
                "usdTo": {c: text(fx.usd_to[c]) for c in sorted(currencies) if c in fx.usd_to},
            }
        # Made and serialised at once: the document dies young (see above).
        out[uid] = (
            orjson.dumps(
                {
                    **head,
                    "baseCurrency": base,
                    "contribution": text(contributions[uid]),
                    "criteria": {
                        "version": None if version is None else int(version),
                        "rules": rules_of.get(uid, []),
                    },
                    "assetClasses": classes_of.get(uid, []),
                    "holdings": held,
                    "rates": rates,
                    "fundamentals": funds_of.get(uid, {}),
                }
            ).decode(),
            len(held),
        )
    return out
