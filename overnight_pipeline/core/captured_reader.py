"""`INPUTS_CAPTURED` read back (`captured_writer` writes it): the batch a calculation's
documents describe (`batch_from_captured`, what `scoring.replay` and the `replay_matches`
check recompute from), a document with what it references put back in (`self_contained`),
and what it references (`snapshot_keys`, `captured_rules`).

Two shapes are replayed. Since revision 0003 (`"format": 2`) what a calculation's users
share, its market data (prices, fundamentals and rates as the run used them), is one
immutable snapshot stored once in `calculation_snapshots` under the hash of its canonical
encoding (`market_snapshot`), and each user's document keeps what is the user's own
(contribution, classes, criteria version and rules, holdings as a column list) and the
snapshot's hash. Documents written before it carry their market data themselves. Format 3
references the rules too (a criteria snapshot); format 4 (issue 25) names each held asset
by the position of its row in the market snapshot's `assets.rows` (column `asset`, an
integer from 0) instead of its id (`holding_assets`). Format 5 (issue 25) keeps only
references: the user's own inputs (base currency, contribution, classes, holdings by asset
id) are an `inputs` snapshot too; `own_inputs` puts them back (a format-3 document).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

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


def batch_from_captured(
    items: Iterable[tuple[Any, Mapping[str, Any]]],
    snapshots: Mapping[str, Mapping[str, Any]] | None = None,
) -> tuple[Batch, FxRates]:
    """The batch (and the union of the captured rates) that the payloads describe; a
    document of format 2 or 3 is read with the snapshots it references (`snapshots`: hash
    → payload, market and criteria alike). One calculation at a time: an asset's fundamentals are taken once."""
    rows = _Rows(snapshots)
    own, referenced, captured = rows.own, rows.referenced_market, rows.captured_market
    for uid, doc in items:
        if doc.get("format") == 5:
            doc = own_inputs(doc, snapshots)
        own(uid, doc)
        if doc.get("format") in REFERENCING:
            referenced(uid, doc)
        else:
            captured(uid, doc)
    return rows.result()


class _Rows:
    """The rows of the batch `batch_from_captured` reads, one document at a time, and the
    union of the captured rates; each value's text parsed once, each snapshot opened once."""

    def __init__(self, snapshots: Mapping[str, Mapping[str, Any]] | None) -> None:
        self.snapshots = snapshots
        self.users: list[tuple[Any, ...]] = []
        self.classes: list[tuple[Any, ...]] = []
        self.holdings: list[tuple[Any, ...]] = []
        self.rules: list[tuple[Any, ...]] = []
        self.fundamentals: dict[str, dict[str, Decimal | None]] = {}
        self.usd_to: dict[str, Decimal] = {}
        self.as_of: datetime | None = None
        self.stale = False
        self.d = _Decimals().get_decimal
        self.stamps: dict[str, datetime] = {}
        # What each asset's fundamentals were parsed from: holders of an asset repeat its text.
        self.parsed_from: dict[str, dict[str, Any]] = {}
        self.opened: dict[str, _Snapshot] = {}

    def own(self, uid: Any, doc: Mapping[str, Any]) -> None:
        """The user's row, classes and rules."""
        _d = self.d
        self.users.append(
            (
                uid,
                doc["baseCurrency"],
                _d(doc["contribution"], "contribution"),
                doc["criteria"]["version"],
            )
        )
        classes = self.classes
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
        rules = self.rules
        # Every format's rules: its own, or its criteria snapshot's (format 3).
        for rule in captured_rules(doc, self.snapshots):
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

    def referenced_market(self, uid: Any, doc: Mapping[str, Any]) -> None:
        """Formats 2 to 4: the user's holdings priced from the market snapshot it references."""
        _d = self.d
        key = doc["snapshot"]
        snap = self.opened.get(key)
        if snap is None:
            snapshots = self.snapshots
            if snapshots is None or key not in snapshots:
                raise KeyError(f"snapshot {key} of INPUTS_CAPTURED is not available")
            snap = self.opened[key] = _Snapshot.of(snapshots[key], _d)
            for aid, values in snap.fundamentals.items():
                self.fundamentals.setdefault(aid, values)
            self.usd_to.update(snap.usd_to)
            self.as_of = snap.as_of or self.as_of
            self.stale = self.stale or snap.stale
        assets = snap.assets
        holdings = self.holdings
        rows = doc["holdings"]["rows"]
        if doc["format"] == 4:
            ids = snap.ids(rows, key)
            rows = [(aid, cls, qty) for aid, (_, cls, qty) in zip(ids, rows, strict=True)]
        for aid, cls, qty in rows:
            symbol, currency, price, stamp = assets[aid]
            holdings.append((uid, aid, symbol, cls, _d(qty, "quantity"), currency, price, stamp))

    def captured_market(self, uid: Any, doc: Mapping[str, Any]) -> None:
        """Format 1: the user's holdings, fundamentals and rates as the document holds them."""
        _d = self.d
        stamps = self.stamps
        holdings = self.holdings
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
        fundamentals = self.fundamentals
        parsed_from = self.parsed_from
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
            self.usd_to[cur] = parse_decimal(v, field_name=f"rates.usdTo.{cur}")
        if rates.get("asOf"):
            self.as_of = datetime.fromisoformat(rates["asOf"])
        self.stale = self.stale or bool(rates.get("stale"))

    def result(self) -> tuple[Batch, FxRates]:
        """The batch of the rows read, and the union of the rates."""
        fund = _frame(
            [(a, *[v.get(m) for m in METRICS]) for a, v in self.fundamentals.items()],
            ["asset_id", *METRICS],
        ).set_index("asset_id")
        batch = Batch(
            users=_frame(self.users, list(USER_COLUMNS)),
            classes=_frame(self.classes, list(CLASS_COLUMNS)),
            holdings=_frame(self.holdings, list(HOLDING_COLUMNS)),
            rules=_frame(self.rules, list(RULE_COLUMNS)),
            fundamentals=fund,
        )
        usd_to = self.usd_to
        usd_to.pop("USD", None)
        return batch, FxRates(usd_to=usd_to, as_of=self.as_of, stale=self.stale)


def _frame(rows: list[tuple[Any, ...]], columns: list[str]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=columns, dtype=object)


@dataclass(frozen=True)
class _Snapshot:
    """A market snapshot's payload, parsed once per replay."""

    assets: dict[str, tuple[str, str, Decimal | None, datetime | None]]
    fundamentals: dict[str, dict[str, Decimal | None]]
    usd_to: dict[str, Decimal]
    as_of: datetime | None
    stale: bool
    order: list[str]  # the asset ids in the order of the rows

    def ids(self, rows: list[Any], key: str) -> list[str]:
        """The asset ids of format-4 holding rows (their first column, a row's position)."""
        return [_position(self.order, row, i, key) for i, row in enumerate(rows)]

    @classmethod
    def of(cls, payload: Mapping[str, Any], d: Callable[[Any, str], Decimal | None]) -> _Snapshot:
        assets = {}
        order = []
        for aid, _market, symbol, currency, price, stamp in payload["assets"]["rows"]:
            order.append(aid)
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
        return cls(assets, fundamentals, usd_to, as_of, bool(rates.get("stale")), order)


REFERENCING = (2, 3, 4, 5)
"""The formats that reference a market snapshot."""


def own_inputs(
    doc: Mapping[str, Any], snapshots: Mapping[str, Mapping[str, Any]] | None
) -> Mapping[str, Any]:
    """A format-5 document as the format-3 document it stands for: the user's own inputs
    (`baseCurrency`, `contribution`, `assetClasses`, `holdings` by asset id) read from the
    `inputs` snapshot it references; any other format as it is."""
    if doc.get("format") != 5:
        return doc
    key = doc["inputs"]
    if snapshots is None or key not in snapshots:
        raise KeyError(f"inputs snapshot {key} of INPUTS_CAPTURED is not available")
    own = snapshots[key]
    out = {k: v for k, v in doc.items() if k != "inputs"}
    out["format"] = 3
    for name in ("baseCurrency", "contribution", "assetClasses", "holdings"):
        out[name] = own[name]
    return out


def _position(order: list[str], row: Any, i: int, key: str) -> str:
    """The asset id at the position a format-4 holding row names."""
    at = row[0] if isinstance(row, list) and row else None
    if type(at) is not int or not 0 <= at < len(order):
        raise ValueError(
            f"INPUTS_CAPTURED holdings.rows[{i}].asset: must be the position of a row of"
            f" snapshot {key} (0 to {len(order) - 1}), got {at!r}"
        )
    return order[at]


def holding_assets(doc: Mapping[str, Any], snapshots: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """The asset ids of the holdings of a document of format 2 to 5, in order (format 4:
    read from the market snapshot's rows; format 5: from its `inputs` snapshot)."""
    doc = own_inputs(doc, snapshots)
    rows = doc["holdings"]["rows"]
    if doc.get("format") != 4:
        return [row[0] for row in rows]
    key = doc["snapshot"]
    order = [row[0] for row in snapshots[key]["assets"]["rows"]]
    return [_position(order, row, i, key) for i, row in enumerate(rows)]


def self_contained(
    doc: Mapping[str, Any], snapshots: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """A format-2 to -5 `INPUTS_CAPTURED` document with what it references put back in,
    from `snapshots` (hash → payload, as `storage.events.snapshots` returns them): the
    market snapshot's data (format 4: the held assets' ids too), formats 3 to 5 the
    criteria snapshot's rules, format 5 the user's own inputs. The result is the
    self-contained shape written before (`capture_json` without snapshots gives the same
    document for the same batch), for operators and the one-user paths."""
    if doc.get("format") not in REFERENCING:
        return dict(doc)
    doc = own_inputs(doc, snapshots)
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
    held = holding_assets(doc, snapshots)
    for aid, (_, cls, qty) in zip(held, doc["holdings"]["rows"], strict=True):
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


def snapshot_keys(doc: Mapping[str, Any]) -> list[str]:
    """The snapshots an `INPUTS_CAPTURED` document references: its market snapshot (formats
    2 to 5), its criteria snapshot (formats 3 to 5) and its inputs snapshot (format 5)."""
    keys = [doc["snapshot"]] if doc.get("format") in REFERENCING else []
    criteria = doc.get("criteria") or {}
    if "snapshot" in criteria:
        keys.append(criteria["snapshot"])
    if doc.get("format") == 5:
        keys.append(doc["inputs"])
    return keys


def captured_rules(
    doc: Mapping[str, Any], snapshots: Mapping[str, Mapping[str, Any]] | None
) -> Any:
    """The criteria rules of an `INPUTS_CAPTURED` document: its own (formats 1 and 2) or
    those of the `criteria` snapshot it references (formats 3 to 5)."""
    criteria = doc["criteria"]
    if "rules" in criteria:
        return criteria["rules"]
    key = criteria["snapshot"]
    if snapshots is None or key not in snapshots:
        raise KeyError(f"criteria snapshot {key} of INPUTS_CAPTURED is not available")
    return snapshots[key]["rules"]
