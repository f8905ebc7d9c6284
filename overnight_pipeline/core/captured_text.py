"""The JSON text of what the pipeline writes each night for each user, `INPUTS_CAPTURED` of
format 5 and the canonical text of the user's `inputs` snapshot it references (or format 4
or 3), assembled from pieces of text made from the batch's columns, without a dict or a list
per row.

The bytes are those `orjson.dumps` writes of the documents `core.captured_writer` describes
(the same keys in the same order, compact, strings escaped by orjson itself): the tests
compare them with the dict builder's output (`overnight_pipeline_tests/core/test_captured.py`).
A Decimal is its `format(d, "f")` text between quotes, digits, sign and point that JSON
never escapes; every other string goes through `orjson.dumps`, once per distinct value.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal
from itertools import groupby
from types import NoneType
from typing import Any

import numpy as np
import orjson
import pandas as pd

from overnight_pipeline.core.batch import Batch
from overnight_pipeline.core.batch.arrays import is_null

HOLDING_FIELDS = ("assetId", "assetClass", "quantity")
# Format 4: a holding's asset is the position of its row in the market snapshot.
POSITION_FIELDS = ("asset", "assetClass", "quantity")


def iso_text(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def plain_text(value: Decimal) -> str:
    return format(value, "f")


def texts_by_identity(make: Callable[[Any], str] = plain_text) -> Callable[[Any], str | None]:
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
            found = made[id(value)] = None if is_null(value) else make(value)
            return found

    return text


def plain_texts(values: list[Any]) -> list[str | None]:
    """`format(d, "f")` of each Decimal; None for None (or a float NaN, pandas' missing
    value). A column of Decimals and None whose `str` has no exponent (a Decimal's `str` and
    `format(d, "f")` differ only where it has one) takes `str`, several times cheaper; any
    other column is formatted value by value."""
    texts = list(map(str, values))
    kinds = set(map(type, values))
    if kinds <= _PLAIN and "E" not in "".join(texts):
        if NoneType in kinds:  # no Decimal's text is "None"
            return [None if t == "None" else t for t in texts]
        return texts  # type: ignore[return-value]
    return [None if v is None or (v.__class__ is float and v != v) else f"{v:f}" for v in values]


def shared_plain_texts(values: list[Any]) -> list[str | None]:
    """`plain_texts` of a column whose values are shared objects (the batch loader makes one
    Decimal per distinct text: a batch's 30,000 quantities are a few hundred objects): each
    distinct object's text made once, by identity (never by value: 1.0 == 1.00 but their
    texts differ). A third less than `plain_texts` on the quantities of a batch."""
    n = len(values)
    if not n:
        return []
    codes, ids = pd.factorize(np.fromiter(map(id, values), dtype=np.int64, count=n))
    first = np.full(len(ids), n, dtype=np.int64)
    np.minimum.at(first, codes, np.arange(n))
    made = plain_texts(list(map(values.__getitem__, first.tolist())))
    texts: list[str | None] = np.array(made, dtype=object)[codes].tolist()
    return texts


def decimal_json(values: list[Any]) -> list[str]:
    """Each Decimal as a JSON string of its plain text (`plain_texts`); null for None."""
    return ["null" if t is None else f'"{t}"' for t in plain_texts(values)]


_PLAIN = {Decimal, NoneType}


def _int_json(value: Any) -> str:
    return (
        "null"
        if value is None or (value.__class__ is float and value != value)
        else str(int(value))
    )


def json_column(values: list[Any]) -> list[str]:
    """`orjson.dumps(value)` as text of each value (strings, None), made once per distinct
    value."""
    made = {v: orjson.dumps(v).decode() for v in set(values)}
    return list(map(made.__getitem__, values))


def grouped(keys: list[Any], texts: list[str]) -> dict[Any, list[str]]:
    """`texts` by key, in their order: each run of equal keys (a user's rows, together in
    the pipeline's frames) taken at once."""
    out: dict[Any, list[str]] = {}
    at = 0
    for key, run in groupby(keys):
        n = len(list(run))
        found = out.get(key)
        if found is None:
            out[key] = texts[at : at + n]
        else:
            found.extend(texts[at : at + n])
        at += n
    return out


# The user's own inputs as a snapshot (format 5): the keys of every object sorted, as
# `snapshots.snapshot_hash` encodes them, so the text is the canonical one and its
# SHA-256 the snapshot's hash; holdings name their assets by id (a snapshot outlives the
# night's market snapshot, whose row positions may change).
_OWN_HEAD = '{"assetClasses":['
_OWN_HOLDINGS = '"holdings":{"columns":["assetId","assetClass","quantity"],"rows":['


def _holding_texts(batch: Batch, assets: list[str]) -> dict[Any, list[str]]:
    """Each user's holdings as JSON rows `[asset, class, quantity]`, the asset as `assets`
    gives it (one text per holding)."""
    h = batch.holdings
    return grouped(
        h["user_id"].tolist(),
        [
            f"[{aid},{cls},{quantity}]"
            for aid, cls, quantity in zip(
                assets,
                json_column(h["asset_class"].tolist()),
                decimal_json(h["quantity"].tolist()),
                strict=True,
            )
        ],
    )


def user_runs(user_ids: Any) -> tuple[list[int], list[Any], np.ndarray] | None:
    """Of rows grouped by user: where each user's rows start (and, last, the number of
    rows), the users, and 1 for a row after its user's first (0 for the first); None when a
    user's rows are not together. Neighbours compared, not hashed: a third of
    `pd.factorize`'s time on a batch's user ids."""
    ids = np.asarray(user_ids, dtype=object)
    n = len(ids)
    change = np.ones(n, dtype=bool)
    np.not_equal(ids[1:], ids[:-1], out=change[1:])
    heads = np.flatnonzero(change)
    users = ids[heads].tolist()
    if len(set(users)) != len(users):
        return None
    later = np.logical_not(change).astype(np.int64)
    return [*heads.tolist(), n], users, later


def joined_runs(bounds: list[int], users: list[Any], columns: list[Any]) -> dict[Any, str]:
    """user → its rows' tokens joined (`user_runs`' bounds and users): row i is the i-th
    token of each of `columns` in turn. The tokens are placed in one array for the batch,
    each user's run joined by one `str.join`."""
    width = len(columns)
    tokens = np.empty(width * bounds[-1], dtype=object)
    for j, column in enumerate(columns):
        tokens[j::width] = column
    listed = tokens.tolist()
    at = [width * b for b in bounds]
    texts = map("".join, map(listed.__getitem__, map(slice, at[:-1], at[1:])))
    return dict(zip(users, texts, strict=True))


def coded_json(values: Any) -> tuple[np.ndarray, list[str]] | None:
    """A code per value and the JSON text of each code's value (strings); None for a null."""
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    if (codes < 0).any():
        return None
    return codes, json_column(uniques.tolist())


def _plain_strings(values: list[Any]) -> bool:
    """Whether each of `values` is a string orjson writes as itself between quotes: no
    quote, backslash or control character (nor anything else `str.isprintable` refuses)."""
    distinct = set(values)
    if not all(type(v) is str for v in distinct):
        return False
    text = "".join(distinct)
    return '"' not in text and "\\" not in text and text.isprintable()


def _holding_rows(h: pd.DataFrame) -> dict[Any, str] | None:
    """Each user's holdings as the JSON text of its rows `[asset id, class, quantity]`,
    comma-separated (`_holding_texts` joined), assembled for the batch at once: each row is
    five tokens (the opening, with the comma of a row after the user's first; the asset id,
    which needs no escaping; its class's text, made once per class; the quantity's text;
    the closing). None when a user's rows are not together, or an asset id needs escaping,
    or a class is null."""
    if not len(h):
        return {}
    runs = user_runs(h["user_id"].to_numpy(dtype=object))
    assets = h["asset_id"].tolist()
    classes = coded_json(h["asset_class"])
    if runs is None or classes is None or not _plain_strings(assets):
        return None
    bounds, users, later = runs
    quantities = shared_plain_texts(h["quantity"].tolist())
    null = np.zeros(len(h), dtype=np.int64)
    if None in quantities:
        null[[i for i, q in enumerate(quantities) if q is None]] = 1
        quantities = ["null" if q is None else q for q in quantities]
    class_codes, class_json = classes
    middle = [*(f'",{c},"' for c in class_json), *(f'",{c},' for c in class_json)]
    return joined_runs(
        bounds,
        users,
        [
            np.array(['["', ',["'], dtype=object)[later],
            assets,
            np.array(middle, dtype=object)[class_codes + len(class_json) * null],
            quantities,
            np.array(['"]', "]"], dtype=object)[null],
        ],
    )


def _class_texts(batch: Batch, *, sort_keys: bool) -> dict[Any, list[str]]:
    """Each user's asset classes as JSON objects, in the documents' key order or sorted."""
    c = batch.classes
    columns = zip(
        json_column(c["name"].tolist()),
        decimal_json(c["target_min"].tolist()),
        decimal_json(c["target_max"].tolist()),
        map(_int_json, c["max_assets"].tolist()),
        decimal_json(c["min_allocation_value"].tolist()),
        strict=True,
    )
    texts = (
        [
            f'{{"maxAssets":{most},"minAllocationValue":{least},"name":{name},'
            f'"targetMax":{hi},"targetMin":{lo}}}'
            for name, lo, hi, most, least in columns
        ]
        if sort_keys
        else [
            f'{{"name":{name},"targetMin":{lo},"targetMax":{hi},'
            f'"maxAssets":{most},"minAllocationValue":{least}}}'
            for name, lo, hi, most, least in columns
        ]
    )
    return grouped(c["user_id"].tolist(), texts)


def own_texts(batch: Batch) -> dict[Any, str]:
    """Each user's own inputs (base currency, contribution, asset classes, holdings by asset
    id) as the canonical JSON text of an `inputs` snapshot (keys sorted, compact: what
    `snapshot_hash` encodes), by user id."""
    users = batch.users
    rows_of = _holding_rows(batch.holdings)
    if rows_of is None:
        held = _holding_texts(batch, json_column(batch.holdings["asset_id"].tolist()))
        rows_of = {uid: ",".join(texts) for uid, texts in held.items()}
    classes_of = _class_texts(batch, sort_keys=True)
    out: dict[Any, str] = {}
    for uid, base, contribution in zip(
        users["user_id"].tolist(),
        json_column(users["base_currency"].tolist()),
        decimal_json(users["contribution"].tolist()),
        strict=True,
    ):
        out[uid] = (
            f'{_OWN_HEAD}{",".join(classes_of.get(uid, ()))}],"baseCurrency":{base},'
            f'"contribution":{contribution},{_OWN_HOLDINGS}{rows_of.get(uid, "")}]}}}}'
        )
    return out


def inputs_texts(
    counts: Mapping[Any, int],
    *,
    market: str,
    market_date: date,
    criteria_versions: Mapping[Any, int | None],
    snapshot: str,
    criteria: Mapping[Any, str],
    inputs: Mapping[Any, str],
) -> dict[Any, tuple[str, int]]:
    """`INPUTS_CAPTURED` of format 5 of the users of `inputs` (user id → the hash of the
    user's `inputs` snapshot, `snapshots.inputs_snapshots`): only references, the
    market snapshot, the criteria version and snapshot, the user's own inputs; user id →
    (the document, its number of holdings, from `counts`)."""
    js = json_column
    head = (
        f'{{"format":5,"market":{js([market])[0]},"marketDate":"{market_date.isoformat()}",'
        f'"snapshot":{js([snapshot])[0]},"criteria":{{"version":'
    )
    out: dict[Any, tuple[str, int]] = {}
    for uid, own in inputs.items():
        out[uid] = (
            f'{head}{_int_json(criteria_versions.get(uid))},"snapshot":"{criteria[uid]}"}},'
            f'"inputs":"{own}"}}',
            counts.get(uid, 0),
        )
    return out


def referencing_texts(
    batch: Batch,
    *,
    market: str,
    market_date: date,
    criteria_versions: Mapping[Any, int | None],
    snapshot: str,
    criteria: Mapping[Any, str],
    positions: Mapping[str, int] | None = None,
) -> dict[Any, tuple[str, int]]:
    """`INPUTS_CAPTURED` of format 3 (`core.captured_writer.capture_json` with a market
    snapshot and criteria snapshots) of every user of `batch`: user id → (the document, its
    number of holdings). With `positions` (asset id → the position of its row in the market
    snapshot) holding every asset of the batch, format 4: the same document with each
    holding's asset id replaced by that position (column `asset`)."""
    h, users = batch.holdings, batch.users
    asset_ids = h["asset_id"].tolist()
    distinct = set(asset_ids)
    if positions is not None and all(a in positions for a in distinct):
        fmt, fields = 4, POSITION_FIELDS
        made = {a: str(positions[a]) for a in distinct}
        assets = list(map(made.__getitem__, asset_ids))
    else:
        fmt, fields, assets = 3, HOLDING_FIELDS, json_column(asset_ids)
    holdings_of = _holding_texts(batch, assets)
    classes_of = _class_texts(batch, sort_keys=False)
    js = json_column
    head = (
        f'{{"format":{fmt},"market":{js([market])[0]},"marketDate":"{market_date.isoformat()}",'
        f'"snapshot":{js([snapshot])[0]},"baseCurrency":'
    )
    tail = f'"holdings":{{"columns":{orjson.dumps(list(fields)).decode()},"rows":['
    out: dict[Any, tuple[str, int]] = {}
    uids = users["user_id"].tolist()
    for uid, base, contribution, key in zip(
        uids,
        js(users["base_currency"].tolist()),
        decimal_json(users["contribution"].tolist()),
        js([criteria[uid] for uid in uids]),
        strict=True,
    ):
        held = holdings_of.get(uid, ())
        out[uid] = (
            f"{head}{base},"
            f'"contribution":{contribution},'
            f'"criteria":{{"version":{_int_json(criteria_versions.get(uid))},"snapshot":{key}}},'
            f'"assetClasses":[{",".join(classes_of.get(uid, ()))}],'
            f"{tail}{','.join(held)}]}}}}",
            len(held),
        )
    return out
