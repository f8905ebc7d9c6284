"""The content-addressed snapshots a calculation's `INPUTS_CAPTURED` documents reference
(`core.captured_writer`, format 2 and later): the market data of the calculation
(`market_snapshot`, one per calculation), each user's criteria rules (`criteria_snapshots`,
format 3) and each user's own inputs (`inputs_snapshots`, format 5); the rows of the market
snapshot also number the held assets of format 4 (`asset_positions`). Each is keyed by
`snapshot_hash` of its content, so the same content gets the same key in every shard and
every night, and `storage.events.insert_snapshots` stores it once a month.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from decimal import Decimal
from itertools import repeat
from operator import is_, is_not
from typing import Any

import numpy as np
import orjson
import pandas as pd

from overnight_pipeline.core.batch import Batch
from overnight_pipeline.core.captured_text import (
    grouped,
    iso_text,
    joined_runs,
    json_column,
    own_texts,
    plain_texts,
    shared_plain_texts,
    texts_by_identity,
    user_runs,
)
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.vocabulary import METRICS

SNAPSHOT_ASSET_COLUMNS = ("assetId", "market", "symbol", "currency", "price", "priceAsOf")


def asset_positions(snapshot: Mapping[str, Any]) -> dict[str, int]:
    """asset id → the position of its row in a market snapshot's `assets.rows` (the payload
    `market_snapshot` returns): what `capture_json` names held assets by in format 4."""
    return {row[0]: i for i, row in enumerate(snapshot["assets"]["rows"])}


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
    text = texts_by_identity()
    rows = []
    ids = set()
    for aid, market, symbol, currency in sorted(assets):
        price, quoted, as_of = prices.get(aid, (None, None, None))
        rows.append([aid, market, symbol, quoted or currency, text(price), iso_text(as_of)])
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
            "asOf": iso_text(fx.as_of),
            "stale": fx.stale,
            "usdTo": {c: text(fx.usd_to[c]) for c in sorted(fx.usd_to)},
        },
    }
    return snapshot_hash(payload), payload


class SnapshotTexts(Mapping[str, Any]):
    """hash → payload of snapshots kept as their canonical text, each parsed only when read:
    `storage.events.insert_snapshots` reads the payloads of the month's missing snapshots
    only, and most nights every user's is there already."""

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def __getitem__(self, key: str) -> Any:
        return orjson.loads(self.texts[key])

    def __iter__(self) -> Iterator[str]:
        return iter(self.texts)

    def __len__(self) -> int:
        return len(self.texts)


def criteria_snapshots(batch: Batch) -> tuple[dict[Any, str], SnapshotTexts]:
    """Each user's criteria rules as a `criteria` snapshot: (user id → its hash, hash →
    payload `{"rules": [...]}`, the rules as `INPUTS_CAPTURED` of format 2 listed them). A
    criteria version is immutable, so its snapshot is stored once per month and shared by
    every night (and every user with the same rules) that month.

    Made as the canonical text itself (keys sorted, compact: what `snapshot_hash` encodes)
    from the rules' columns and hashed: no dict per rule and no sorted re-encoding per user.
    The payloads are kept as that text, parsed only when read
    (`storage.events.insert_snapshots` reads those the month lacks, most nights none), and
    the batch's rules are assembled as tokens joined a user at a time (`_rule_runs`):
    19.2–19.5 → 13.9–14.5 µs a user in `bench/batch_cpu_bench.py` (the parse of each user's
    payload was a third of it)."""
    r = batch.rules
    rules_of = _rule_runs(r)
    if rules_of is None:
        rules_of = {uid: ",".join(texts) for uid, texts in _rule_texts(r).items()}
    return _hashed(
        (uid, f'{{"rules":[{rules_of.get(uid, "")}]}}') for uid in batch.users["user_id"].tolist()
    )


def _rule_texts(r: pd.DataFrame) -> dict[Any, list[str]]:
    """Each user's rules as canonical JSON objects, one text per rule."""
    js = json_column
    texts = [
        f'{{"assetClass":{cls},"id":{rid},"metric":{metric},"operator":{op},'
        f'"points":{int(points)}'
        + ("" if v is None else f',"value":"{v}"')
        + ("" if v2 is None else f',"value2":"{v2}"')
        + "}"
        for rid, cls, metric, op, v, v2, points in zip(
            js(r["id"].tolist()),
            js(r["asset_class"].tolist()),
            js(r["metric"].tolist()),
            js(r["operator"].tolist()),
            plain_texts(r["value"].tolist()),
            plain_texts(r["value2"].tolist()),
            r["points"].tolist(),
            strict=True,
        )
    ]
    return grouped(r["user_id"].tolist(), texts)


def _rule_runs(r: pd.DataFrame) -> dict[Any, str] | None:
    """`_rule_texts` of each user joined, assembled for the batch at once: per rule its text
    up to its points, its value's opening, the value's text and the rest (`_value_tokens`),
    placed in one array and joined a user at a time (`captured_text.joined_runs`): no
    condition or concatenation per rule. None when a user's rules are not together."""
    if not len(r):
        return {}
    runs = user_runs(r["user_id"].to_numpy(dtype=object))
    if runs is None:
        return None
    bounds, users, later = runs
    js = json_column
    heads = [
        f'{sep}{{"assetClass":{cls},"id":{rid},"metric":{metric},"operator":{op},'
        f'"points":{int(points)}'
        for sep, rid, cls, metric, op, points in zip(
            np.array(["", ","], dtype=object)[later].tolist(),
            js(r["id"].tolist()),
            js(r["asset_class"].tolist()),
            js(r["metric"].tolist()),
            js(r["operator"].tolist()),
            r["points"].tolist(),
            strict=True,
        )
    ]
    opening, values, tails = _value_tokens(r)
    return joined_runs(bounds, users, [heads, opening, values, tails])


def _value_tokens(r: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Of each rule: `,"value":"` or nothing, the value's text or nothing, and the rest of
    its object (the value's closing quote, `value2` when it has one, the closing brace)."""
    v = shared_plain_texts(r["value"].tolist())
    v2 = shared_plain_texts(r["value2"].tolist())
    n = len(v)
    absent = np.fromiter(map(is_, v, repeat(None)), dtype=bool, count=n)
    values = np.array(v, dtype=object)
    values[absent] = ""
    which = absent.astype(np.int64)
    opening = np.array([',"value":"', ""], dtype=object)[which]
    tails = np.array(['"}', "}"], dtype=object)[which]
    second = np.fromiter(map(is_not, v2, repeat(None)), dtype=bool, count=n)
    for j in np.flatnonzero(second).tolist():
        tails[j] = ("" if absent[j] else '"') + f',"value2":"{v2[j]}"}}'
    return opening, values, tails


def _hashed(texts: Iterable[tuple[Any, str]]) -> tuple[dict[Any, str], SnapshotTexts]:
    """(user id → the hash of its canonical text, hash → payload) of (user id, text)
    pairs."""
    keys: dict[Any, str] = {}
    by_key: dict[str, str] = {}
    sha256 = hashlib.sha256
    for uid, text in texts:
        key = keys[uid] = sha256(text.encode()).hexdigest()
        by_key[key] = text
    return keys, SnapshotTexts(by_key)


def inputs_snapshots(batch: Batch) -> tuple[dict[Any, str], SnapshotTexts]:
    """Each user's own inputs (base currency, contribution, asset classes, holdings by asset
    id: what `INPUTS_CAPTURED` of format 4 repeated every night) as an `inputs` snapshot:
    (user id → its hash, hash → payload). Content-addressed: users with the same inputs
    share one, and a month stores it once while they do not change
    (`storage.events.insert_snapshots`)."""
    return _hashed(own_texts(batch).items())
