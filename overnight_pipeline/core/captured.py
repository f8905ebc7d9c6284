"""`INPUTS_CAPTURED`: everything a user's calculation depends on, as one JSON document.

The pipeline writes it in the same transaction as the user's scores and recommendations,
which it computes from the same in-memory batch; that what was captured is all they depend
on is proven by the tests and, on every run, by the `replay_matches` check
(`steps.replay_sample`: a sample of users rebuilt from this document alone, compared with
what was stored). `scoring.replay` recomputes the scores from the same document. Decimals are strings; fundamentals are kept
for the metrics the user's rules read (a metric no rule reads cannot change the result),
nulls included.

Two shapes are replayed. Since revision 0003 (`"format": 2`) what a calculation's users
share, its market data (prices, fundamentals and rates as the run used them), is one
immutable snapshot stored once in `calculation_snapshots` under the hash of its canonical
encoding (`market_snapshot`), and each user's document keeps what is the user's own
(contribution, classes, criteria version and rules, holdings as a column list) and the
snapshot's hash. Documents written before it carry their market data themselves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pandas as pd

from overnight_pipeline.core.batch import (
    CLASS_COLUMNS,
    HOLDING_COLUMNS,
    RULE_COLUMNS,
    USER_COLUMNS,
    Batch,
)
from overnight_pipeline.core.money import FxRates, parse_decimal
from overnight_pipeline.core.vocabulary import METRICS


def _s(value: Decimal | None) -> str | None:
    return None if value is None else format(value, "f")


class _Decimals(dict[str, Decimal]):
    """Decimals of the strings of one call: captured documents repeat the same strings (an
    asset's fundamentals for each holder, round quantities), each is parsed once. Per call,
    so memory stays bounded by the batch (a process-wide cache filled up early in a large
    run and then missed on nearly every value: docs/PERFORMANCE.md, "Figures once quoted in
    the code")."""

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


def batch_from_captured(
    items: Iterable[tuple[Any, Mapping[str, Any]]],
    snapshots: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Batch, FxRates]:
    """The batch (and the union of the captured rates) that the payloads describe; a
    document of format 2 or 3 is read with the snapshots it references (`snapshots`: hash
    → payload, market and criteria alike). One calculation at a time: an asset's fundamentals are taken once."""
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
    opened: dict[str, _Snapshot] = {}
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
        # Every format's rules: its own, or its criteria snapshot's (format 3).
        for rule in captured_rules(doc, snapshots):
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
        if doc.get("format") in (2, 3):
            key = doc["snapshot"]
            snap = opened.get(key)
            if snap is None:
                if snapshots is None or key not in snapshots:
                    raise KeyError(f"snapshot {key} of INPUTS_CAPTURED is not available")
                snap = opened[key] = _Snapshot.of(snapshots[key], _d)
                for aid, values in snap.fundamentals.items():
                    fundamentals.setdefault(aid, values)
                usd_to.update(snap.usd_to)
                as_of = snap.as_of or as_of
                stale = stale or snap.stale
            assets = snap.assets
            for aid, cls, qty in doc["holdings"]["rows"]:
                symbol, currency, price, stamp = assets[aid]
                holdings.append(
                    (uid, aid, symbol, cls, _d(qty, "quantity"), currency, price, stamp)
                )
            continue
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
        users=frame(users, list(USER_COLUMNS)),
        classes=frame(classes, list(CLASS_COLUMNS)),
        holdings=frame(holdings, list(HOLDING_COLUMNS)),
        rules=frame(rules, list(RULE_COLUMNS)),
        fundamentals=fund,
    )
    usd_to.pop("USD", None)
    return batch, FxRates(usd_to=usd_to, as_of=as_of, stale=stale)


@dataclass(frozen=True)
class _Snapshot:
    """A market snapshot's payload, parsed once per replay."""

    assets: dict[str, tuple[str, str, Decimal | None, datetime | None]]
    fundamentals: dict[str, dict[str, Decimal | None]]
    usd_to: dict[str, Decimal]
    as_of: datetime | None
    stale: bool

    @classmethod
    def of(cls, payload: Mapping[str, Any], d: Callable[[Any, str], Decimal | None]) -> _Snapshot:
        assets = {}
        for aid, _market, symbol, currency, price, stamp in payload["assets"]["rows"]:
            assets[aid] = (
                symbol,
                currency,
                d(price, "price"),
                None if stamp is None else datetime.fromisoformat(stamp),
            )
        metrics = payload["fundamentals"]["columns"][1:]
        fundamentals = {
            row[0]: {m: d(v, m) for m, v in zip(metrics, row[1:], strict=True)}
            for row in payload["fundamentals"]["rows"]
        }
        rates = payload["rates"]
        usd_to = {
            c: parse_decimal(v, field_name=f"rates.usdTo.{c}") for c, v in rates["usdTo"].items()
        }
        as_of = datetime.fromisoformat(rates["asOf"]) if rates.get("asOf") else None
        return cls(assets, fundamentals, usd_to, as_of, bool(rates.get("stale")))


SNAPSHOT_ASSET_COLUMNS = ("assetId", "market", "symbol", "currency", "price", "priceAsOf")
HOLDING_FIELDS = ("assetId", "assetClass", "quantity")


def snapshot_hash(payload: Mapping[str, Any]) -> str:
    """The key of a snapshot: SHA-256 of its canonical encoding (orjson, keys sorted; every
    number a string), the same for the same content wherever and whenever it is made."""
    return hashlib.sha256(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)).hexdigest()


def market_snapshot(
    assets: Iterable[tuple[str, str, str, str]],
    prices: Mapping[str, tuple[Decimal, str, datetime]],
    fundamentals: pd.DataFrame,
    fx: FxRates,
) -> tuple[str, dict[str, Any]]:
    """(hash, payload) of the market data a calculation uses: each asset of `assets`
    ((asset id, market, symbol, currency)) with its quote from `prices` (the quote's
    currency, else the asset's), the rows of `fundamentals` of those assets, and `fx`.
    Rows are ordered by asset id, so the same data gives the same hash in every shard."""
    text = _texts()
    rows = []
    ids = set()
    for aid, market, symbol, currency in sorted(assets):
        price, quoted, as_of = prices.get(aid, (None, None, None))
        rows.append([aid, market, symbol, quoted or currency, text(price), _iso(as_of)])
        ids.add(aid)
    held = fundamentals[fundamentals.index.isin(ids)].reindex(columns=list(METRICS))
    fund_rows = sorted(
        [aid, *(text(v) for v in values)]
        for aid, values in zip(
            held.index.tolist(), held.to_numpy(dtype=object).tolist(), strict=True
        )
    )
    payload: dict[str, Any] = {
        "assets": {"columns": list(SNAPSHOT_ASSET_COLUMNS), "rows": rows},
        "fundamentals": {"columns": ["assetId", *METRICS], "rows": fund_rows},
        "rates": {
            "asOf": _iso(fx.as_of),
            "stale": fx.stale,
            "usdTo": {c: text(fx.usd_to[c]) for c in sorted(fx.usd_to)},
        },
    }
    return snapshot_hash(payload), payload


def self_contained(
    doc: Mapping[str, Any], snapshots: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """A format-2 or -3 `INPUTS_CAPTURED` document with what it references put back in,
    from `snapshots` (hash → payload, as `storage.events.snapshots` returns them): the
    market snapshot's data and, format 3, the criteria snapshot's rules. The result is the
    self-contained shape written before (`capture_json` without snapshots gives the same
    document for the same batch), for operators and the one-user paths."""
    if doc.get("format") not in (2, 3):
        return dict(doc)
    if "rules" not in doc["criteria"]:
        rules = captured_rules(doc, snapshots)
        doc = {**doc, "criteria": {"version": doc["criteria"]["version"], "rules": rules}}
    snapshot = snapshots[doc["snapshot"]]
    assets = {row[0]: row for row in snapshot["assets"]["rows"]}
    metrics = snapshot["fundamentals"]["columns"][1:]
    values = {
        row[0]: dict(zip(metrics, row[1:], strict=True)) for row in snapshot["fundamentals"]["rows"]
    }
    read = sorted({rule["metric"] for rule in doc["criteria"]["rules"]})
    holdings: list[dict[str, Any]] = []
    fundamentals: dict[str, dict[str, Any]] = {}
    currencies = {doc["baseCurrency"]}
    for aid, cls, qty in doc["holdings"]["rows"]:
        _, market, symbol, currency, price, stamp = assets[aid]
        holdings.append(
            {
                "assetId": aid,
                "symbol": symbol,
                "market": market,
                "assetClass": cls,
                "quantity": qty,
                "currency": currency,
                "price": price,
                "priceAsOf": stamp,
            }
        )
        currencies.add(currency)
        known = values.get(aid, {})
        fundamentals.setdefault(aid, {m: known.get(m) for m in read})
    rates = snapshot["rates"]
    out = {k: v for k, v in doc.items() if k not in ("format", "snapshot", "holdings")}
    return {
        **out,
        "holdings": holdings,
        "rates": {
            "asOf": rates["asOf"],
            "stale": rates["stale"],
            "usdTo": {c: v for c, v in sorted(rates["usdTo"].items()) if c in currencies},
        },
        "fundamentals": fundamentals,
    }


# JSON text of the document -------------------------------------------------------------
#
# `capture_json` builds each user's document from plain dicts and lists, serialised by
# orjson; what repeats (an asset's fundamentals for the same metrics, the rates of the same
# currencies, a Decimal's text) is made once per call and shared. `orjson.loads` of its
# output equals the documents of the dict builder in the tests (`capture` there). Each
# user's document is serialised as soon as it is made: dicts of strings only are not
# tracked by the garbage collector, but the lists holding them are, and a batch's worth
# kept alive doubled the cost. Faster than the f-string builder it replaced
# (`bench/json_bench.py`; docs/PERFORMANCE.md, "Figures once quoted in the code").
# `SCORES_COMPUTED` is built by `core.scored.score_json`.


def _plain_text(value: Decimal) -> str:
    return format(value, "f")


def _texts(make: Callable[[Any], str] = _plain_text) -> Callable[[Any], str | None]:
    """Text of values (`make`, `format(d, "f")` of a Decimal by default; None for a null)
    by the value's identity: the frames share their objects (every holder of an asset its
    price, fundamentals and score Decimals), each is made once per call. Values are kept
    alive, so that an id is never reused by another value meanwhile."""
    made: dict[int, str | None] = {}
    alive: list[Any] = []

    def text(value: Any) -> str | None:
        try:
            return made[id(value)]
        except KeyError:
            alive.append(value)
            found = made[id(value)] = None if _null(value) else make(value)
            return found

    return text


def _rules_by_user(
    r: pd.DataFrame, text: Callable[[Any], str | None]
) -> tuple[dict[Any, list[dict[str, Any]]], dict[Any, set[str]]]:
    """Each user's rules as the documents keep them, and the metrics they read."""
    rules_of: dict[Any, list[dict[str, Any]]] = {}
    metrics_of: dict[Any, set[str]] = {}
    for uid, rid, cls, metric, op, v, v2, points in zip(
        *(r[c].tolist() for c in RULE_COLUMNS), strict=True
    ):
        rule: dict[str, Any] = {
            "id": rid,
            "assetClass": cls,
            "metric": metric,
            "operator": op,
            "points": int(points),
        }
        if not _null(v):
            rule["value"] = text(v)
        if not _null(v2):
            rule["value2"] = text(v2)
        rules_of.setdefault(uid, []).append(rule)
        metrics_of.setdefault(uid, set()).add(metric)
    return rules_of, metrics_of


def criteria_snapshots(batch: Batch) -> dict[Any, tuple[str, dict[str, Any]]]:
    """Each user's criteria rules as a `criteria` snapshot: user id → (hash, payload
    `{"rules": [...]}`, the rules as `INPUTS_CAPTURED` of format 2 listed them). A
    criteria version is immutable, so its snapshot is stored once per month and shared by
    every night (and every user with the same rules) that month."""
    rules_of, _ = _rules_by_user(batch.rules, _texts())
    out: dict[Any, tuple[str, dict[str, Any]]] = {}
    made: dict[bytes, tuple[str, dict[str, Any]]] = {}
    for uid in batch.users["user_id"].tolist():
        payload = {"rules": rules_of.get(uid, [])}
        encoded = orjson.dumps(payload, option=orjson.OPT_SORT_KEYS)
        found = made.get(encoded)
        if found is None:
            found = made[encoded] = (hashlib.sha256(encoded).hexdigest(), payload)
        out[uid] = found
    return out


def snapshot_keys(doc: Mapping[str, Any]) -> list[str]:
    """The snapshots an `INPUTS_CAPTURED` document references: its market snapshot (formats
    2 and 3) and its criteria snapshot (format 3)."""
    keys = [doc["snapshot"]] if doc.get("format") in (2, 3) else []
    criteria = doc.get("criteria") or {}
    if "snapshot" in criteria:
        keys.append(criteria["snapshot"])
    return keys


def captured_rules(
    doc: Mapping[str, Any], snapshots: Mapping[str, Mapping[str, Any]] | None
) -> Any:
    """The criteria rules of an `INPUTS_CAPTURED` document: its own (formats 1 and 2) or
    those of the `criteria` snapshot it references (format 3)."""
    criteria = doc["criteria"]
    if "rules" in criteria:
        return criteria["rules"]
    key = criteria["snapshot"]
    if snapshots is None or key not in snapshots:
        raise KeyError(f"criteria snapshot {key} of INPUTS_CAPTURED is not available")
    return snapshots[key]["rules"]


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
) -> dict[Any, tuple[str, int]]:
    """`INPUTS_CAPTURED` of every user of `batch` as JSON text: user id → (the document, its
    number of holdings). With `snapshot` (the hash of the market snapshot the batch was
    priced from, `market_snapshot`), format 2: the user's own inputs and that reference;
    with `criteria` as well (user id → the hash of the user's `criteria_snapshots`), format
    3: the rules are referenced too; without, the self-contained shape written before
    (fundamentals from the batch's frame)."""
    fundamentals = batch.fundamentals
    assert isinstance(fundamentals, pd.DataFrame), "capture needs the fundamentals frame"
    text = _texts()
    users = batch.users
    user_ids = users["user_id"].tolist()
    bases = dict(zip(user_ids, users["base_currency"].tolist(), strict=True))
    contributions = dict(zip(user_ids, users["contribution"].tolist(), strict=True))
    # Per user, lists of dicts of strings, numbers and None (untracked by the collector).
    classes_of: dict[Any, list[dict[str, Any]]] = {}
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
        classes_of.setdefault(uid, []).append(
            {
                "name": name,
                "targetMin": text(lo),
                "targetMax": text(hi),
                "maxAssets": None if _null(max_assets) else int(max_assets),
                "minAllocationValue": text(min_value),
            }
        )
    # Format 3 references the rules (`criteria_snapshots`): none to make here.
    rules_of, metrics_of = (
        _rules_by_user(batch.rules, text) if criteria is None or snapshot is None else ({}, {})
    )
    sorted_metrics = {uid: tuple(sorted(ms)) for uid, ms in metrics_of.items()}

    # Each asset's metrics as text, and each pick of them a user needs, made once per call.
    values_of: dict[Any, dict[str, str | None]] = {
        aid: {m: text(v) for m, v in zip(METRICS, row, strict=True)}
        for aid, row in zip(
            fundamentals.index.tolist(),
            fundamentals.reindex(columns=list(METRICS)).to_numpy(dtype=object).tolist(),
            strict=True,
        )
    }
    no_values: dict[str, str | None] = dict.fromkeys(METRICS)
    picked: dict[tuple[Any, tuple[str, ...]], dict[str, str | None]] = {}
    stamp = _texts(datetime.isoformat)
    h = batch.holdings
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
        if snapshot is not None:
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

    as_of_text = _iso(fx.as_of)
    rates_of: dict[frozenset[str], dict[str, Any]] = {}
    head = {"market": market, "marketDate": market_date.isoformat()}
    out: dict[Any, tuple[str, int]] = {}
    for uid in user_ids:
        base = bases[uid]
        version = criteria_versions.get(uid)
        held = holdings_of.get(uid, [])
        if snapshot is not None:
            criteria_doc: dict[str, Any] = {"version": None if version is None else int(version)}
            if criteria is not None:
                criteria_doc["snapshot"] = criteria[uid]
            else:
                criteria_doc["rules"] = rules_of.get(uid, [])
            out[uid] = (
                orjson.dumps(
                    {
                        "format": 2 if criteria is None else 3,
                        **head,
                        "snapshot": snapshot,
                        "baseCurrency": base,
                        "contribution": text(contributions[uid]),
                        "criteria": criteria_doc,
                        "assetClasses": classes_of.get(uid, []),
                        "holdings": {"columns": list(HOLDING_FIELDS), "rows": held},
                    }
                ).decode(),
                len(held),
            )
            continue
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
