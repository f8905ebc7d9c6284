"""INPUTS_CAPTURED round trip: what the pipeline recommends from is what it captured."""

from __future__ import annotations

import dataclasses
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pandas as pd
import pytest
from hypothesis import given, settings

from overnight_pipeline.core.batch import CLASS_COLUMNS, Batch, run_batch, score_batch
from overnight_pipeline.core.captured_reader import (
    batch_from_captured,
    holding_assets,
    own_inputs,
    self_contained,
    snapshot_keys,
)
from overnight_pipeline.core.captured_text import own_texts, plain_texts, referencing_texts
from overnight_pipeline.core.captured_writer import capture_json
from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.scoring import replay
from overnight_pipeline.core.snapshots import (
    asset_positions,
    criteria_snapshots,
    inputs_snapshots,
    market_snapshot,
    snapshot_hash,
)
from overnight_pipeline_tests.core.documents import capture, score_documents
from overnight_pipeline_tests.core.test_batch import FX, batches, to_batch

DAY = date(2026, 11, 30)
FX_AT = FxRates(usd_to=FX.usd_to, as_of=datetime(2026, 11, 30, 6, tzinfo=UTC), stale=True)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_recommending_from_captured_inputs_gives_the_same_result(b) -> None:
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    docs = capture(
        batch,
        FX_AT,
        market="NYSE",
        market_date=DAY,
        criteria_versions={u["user_id"]: 1 for u in user_list},
    )
    again, fx = batch_from_captured(list(docs.items()))
    assert fx.stale and fx.as_of == FX_AT.as_of
    direct, replayed = run_batch(batch, FX_AT), run_batch(again, fx)
    assert replayed.recommendations == direct.recommendations
    assert {u: (e.source, e.target) for u, e in replayed.failures.items()} == {
        u: (e.source, e.target) for u, e in direct.failures.items()
    }
    # The scores computed by the batch path are what `replay` gets from each document.
    scored = score_batch(batch.holdings, batch.rules, batch.fundamentals)
    by_user: dict[str, list[dict]] = {}
    for uid, doc in zip(scored.holdings["user_id"], score_documents(scored), strict=True):
        by_user.setdefault(uid, []).append(doc)
    for uid, doc in docs.items():
        assert [s.to_json() for s in replay(doc).values()] == by_user.get(uid, [])


def _one_quote_per_asset(batch):
    """The batch with each asset's symbol, currency and quote those of its first holder: in
    the pipeline they come from one market snapshot, the same for every holder."""
    h = batch.holdings.copy()
    first = h.drop_duplicates("asset_id").set_index("asset_id")
    for column in ("symbol", "currency", "price", "price_as_of"):
        h[column] = pd.Series([first.at[a, column] for a in h["asset_id"]], dtype=object)
    return type(batch)(batch.users, batch.classes, h, batch.rules, batch.fundamentals)


def _snapshot_of(batch, fx, markets):
    h = batch.holdings
    assets = {
        (a, m, s, c)
        for a, m, s, c in zip(h["asset_id"], markets, h["symbol"], h["currency"], strict=True)
    }
    prices = {
        a: (p, c, t)
        for a, c, p, t in zip(
            h["asset_id"], h["currency"], h["price"], h["price_as_of"], strict=True
        )
        if p is not None
    }
    return market_snapshot(sorted(assets), prices, batch.fundamentals, fx)


@settings(max_examples=150, deadline=None)
@given(batches())
def test_a_document_referencing_a_snapshot_says_what_the_self_contained_one_says(b) -> None:
    user_list, fundamentals = b
    batch = _one_quote_per_asset(to_batch(user_list, fundamentals))
    versions = {u["user_id"]: 1 for u in user_list}
    stamped = FxRates(usd_to=FX_AT.usd_to, as_of=FX_AT.as_of, stale=FX_AT.stale)
    batch.holdings["price_as_of"] = pd.Series(
        [None if p is None else FX_AT.as_of for p in batch.holdings["price"]], dtype=object
    )
    markets = [f"M{ord(a[-1]) % 2}" for a in batch.holdings["asset_id"]]
    key, snapshot = _snapshot_of(batch, stamped, markets)
    # The key is the content's hash, also after a round trip through JSON (the database).
    assert key == snapshot_hash(orjson.loads(orjson.dumps(snapshot)))
    common = {"market": "NYSE", "market_date": DAY, "criteria_versions": versions}
    old = capture_json(batch, stamped, holding_markets=markets, **common)
    new = capture_json(batch, stamped, holding_markets=markets, snapshot=key, **common)
    docs = {uid: orjson.loads(text) for uid, (text, _) in new.items()}
    for uid, doc in docs.items():
        assert doc["format"] == 2 and doc["snapshot"] == key
        assert self_contained(doc, {key: snapshot}) == orjson.loads(old[uid][0])
        # `replay` reads the snapshot for the fundamentals.
        assert replay(doc, snapshot) == replay(orjson.loads(old[uid][0]))
    # Format 3: the rules referenced by a criteria snapshot as well, one per rule set.
    keys, criteria = criteria_snapshots(batch)
    shared = {key: snapshot, **criteria}
    for h, payload in criteria.items():
        assert h == snapshot_hash(orjson.loads(orjson.dumps(payload)))
    # Format 3: without the snapshot's asset positions.
    third = referencing_texts(
        batch, market="NYSE", market_date=DAY, criteria_versions=versions, snapshot=key,
        criteria=keys,
    )  # fmt: skip
    for uid, (text, _) in third.items():
        # Assembled as text (`core.captured_text`): the bytes orjson writes of the document
        # of format 2 with its rules replaced by the criteria snapshot's hash.
        expected = orjson.loads(new[uid][0])
        expected["format"] = 3
        expected["criteria"] = {"version": 1, "snapshot": keys[uid]}
        assert text == orjson.dumps(expected).decode()
        doc = orjson.loads(text)
        assert doc["format"] == 3 and doc["criteria"] == {
            "version": 1,
            "snapshot": keys[uid],
        }
        assert "rules" not in text
        assert self_contained(doc, shared) == orjson.loads(old[uid][0])
        assert replay(doc, snapshot, criteria[keys[uid]]) == replay(orjson.loads(old[uid][0]))
    thirds = [(uid, orjson.loads(text)) for uid, (text, _) in third.items()]
    again3, fx3 = batch_from_captured(thirds, shared)
    assert run_batch(again3, fx3).recommendations == run_batch(batch, stamped).recommendations
    # Format 4, what the pipeline writes (with the snapshot's asset positions): format 3 with
    # each holding's asset named by the position of its row in the market snapshot.
    order = [row[0] for row in snapshot["assets"]["rows"]]
    assert asset_positions(snapshot) == {a: i for i, a in enumerate(order)}
    fourth = capture_json(
        batch, stamped, holding_markets=markets, snapshot=key, criteria=keys,
        positions=asset_positions(snapshot), **common
    )  # fmt: skip
    for uid, (text, count) in fourth.items():
        expected = orjson.loads(third[uid][0])
        expected["format"] = 4
        expected["holdings"] = {
            "columns": ["asset", "assetClass", "quantity"],
            "rows": [[order.index(a), c, q] for a, c, q in expected["holdings"]["rows"]],
        }
        assert text == orjson.dumps(expected).decode() and count == third[uid][1]
        doc = orjson.loads(text)
        assert holding_assets(doc, shared) == [
            r[0] for r in orjson.loads(third[uid][0])["holdings"]["rows"]
        ]
        assert self_contained(doc, shared) == orjson.loads(old[uid][0])
    fourths = [(uid, orjson.loads(text)) for uid, (text, _) in fourth.items()]
    again4, fx4 = batch_from_captured(fourths, shared)
    assert run_batch(again4, fx4).recommendations == run_batch(batch, stamped).recommendations
    assert again4.holdings.equals(again3.holdings)
    # Format 5, what the pipeline writes: only references, the user's own inputs an `inputs`
    # snapshot (holdings by asset id), keyed by the hash of its canonical text.
    own_keys, own = inputs_snapshots(batch)
    for h in set(own_keys.values()):
        assert h == snapshot_hash(orjson.loads(orjson.dumps(own[h])))
    everything = {**shared, **{h: own[h] for h in own}}
    fifth = capture_json(
        batch, stamped, holding_markets=markets, snapshot=key, criteria=keys,
        positions=asset_positions(snapshot), inputs=own_keys, **common
    )  # fmt: skip
    for uid, (text, count) in fifth.items():
        expected = {
            "format": 5,
            "market": "NYSE",
            "marketDate": DAY.isoformat(),
            "snapshot": key,
            "criteria": {"version": 1, "snapshot": keys[uid]},
            "inputs": own_keys[uid],
        }
        assert text == orjson.dumps(expected).decode() and count == third[uid][1]
        doc = orjson.loads(text)
        assert snapshot_keys(doc) == [key, keys[uid], own_keys[uid]]
        assert own_inputs(doc, everything) == orjson.loads(third[uid][0])
        assert holding_assets(doc, everything) == holding_assets(orjson.loads(third[uid][0]), {})
        assert self_contained(doc, everything) == orjson.loads(old[uid][0])
    fifths = [(uid, orjson.loads(text)) for uid, (text, _) in fifth.items()]
    again5, fx5 = batch_from_captured(fifths, everything)
    assert run_batch(again5, fx5).recommendations == run_batch(batch, stamped).recommendations
    assert again5.holdings.equals(again3.holdings) and again5.users.equals(again3.users)
    assert again5.classes.equals(again3.classes) and again5.rules.equals(again3.rules)
    again, fx = batch_from_captured(list(docs.items()), {key: snapshot})
    direct, replayed = run_batch(batch, stamped), run_batch(again, fx)
    assert replayed.recommendations == direct.recommendations
    assert set(replayed.failures) == set(direct.failures)


def test_a_format_4_position_outside_the_snapshot_is_refused_naming_it() -> None:
    snapshot = {
        "assets": {"columns": [], "rows": [["a1", "NYSE", "A", "USD", "1", None]]},
        "fundamentals": {"columns": ["assetId"], "rows": []},
        "rates": {"asOf": None, "stale": False, "usdTo": {}},
    }
    doc: dict[str, Any] = {
        "format": 4,
        "snapshot": "k",
        "baseCurrency": "USD",
        "contribution": "1",
        "criteria": {"version": 1, "rules": []},
        "assetClasses": [],
        "holdings": {"columns": ["asset", "assetClass", "quantity"], "rows": [[0, "S", "1"]]},
    }
    assert holding_assets(doc, {"k": snapshot}) == ["a1"]
    for wrong in (1, -1, "0", True):
        doc["holdings"]["rows"] = [[0, "S", "1"], [wrong, "S", "2"]]
        with pytest.raises(ValueError, match=r"holdings.rows\[1\].asset: must be the position"):
            holding_assets(doc, {"k": snapshot})
        with pytest.raises(ValueError, match=r"holdings.rows\[1\].asset"):
            batch_from_captured([("u", doc)], {"k": snapshot})


def test_a_format_5_document_without_its_inputs_snapshot_is_refused_naming_it() -> None:
    doc = {"format": 5, "snapshot": "m", "criteria": {"version": 1, "snapshot": "c"}}
    doc["inputs"] = "i"
    with pytest.raises(KeyError, match="inputs snapshot i of INPUTS_CAPTURED"):
        own_inputs(doc, {"m": {}, "c": {}})
    with pytest.raises(KeyError, match="inputs snapshot i"):
        batch_from_captured([("u", doc)], {"m": {}, "c": {}})


def test_users_with_the_same_inputs_share_one_inputs_snapshot() -> None:
    """Content-addressed: the same classes, holdings and contribution give the same hash
    whoever holds them; a changed quantity gives another."""
    users = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "base_currency": ["USD"] * 3,
            "contribution": [Decimal("100.00")] * 3,
            "criteria_version": [1] * 3,
        }
    )
    classes = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "name": ["Growth"] * 3,
            "target_min": [Decimal("0.5")] * 3,
            "target_max": [Decimal("1")] * 3,
            "max_assets": [None, None, None],
            "min_allocation_value": [None, None, None],
        },
        dtype=object,
    )
    holdings = pd.DataFrame(
        {
            "user_id": ["u1", "u2", "u3"],
            "asset_id": ["a1"] * 3,
            "asset_class": ["Growth"] * 3,
            "quantity": [Decimal("2"), Decimal("2"), Decimal("3")],
        },
        dtype=object,
    )
    batch = Batch(users, classes, holdings, pd.DataFrame(), pd.DataFrame())
    keys, payloads = inputs_snapshots(batch)
    assert keys["u1"] == keys["u2"] != keys["u3"] and len(payloads) == 2
    assert payloads[keys["u3"]] == {
        "assetClasses": [
            {
                "maxAssets": None,
                "minAllocationValue": None,
                "name": "Growth",
                "targetMax": "1",
                "targetMin": "0.5",
            }
        ],
        "baseCurrency": "USD",
        "contribution": "100.00",
        "holdings": {
            "columns": ["assetId", "assetClass", "quantity"],
            "rows": [["a1", "Growth", "3"]],
        },
    }
    assert keys["u3"] == snapshot_hash(payloads[keys["u3"]])


def _interleaved(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame`'s rows with the users' rows interleaved (each user's first rows, then their
    second ones...), each user's rows still in order: the row-by-row paths take those."""
    return (
        frame.assign(k=frame.groupby("user_id").cumcount())
        .sort_values("k", kind="stable")
        .drop(columns="k")
        .reset_index(drop=True)
    )


@settings(max_examples=50, deadline=None)
@given(batches())
def test_own_inputs_made_for_the_batch_are_those_made_row_by_row(b) -> None:
    """The holdings' rows of the `inputs` snapshots, assembled for the batch at once, are
    those of the row-by-row path, which holdings of users interleaved take; each text is the
    canonical encoding of its payload."""
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    texts = own_texts(batch)
    assert own_texts(dataclasses.replace(batch, holdings=_interleaved(batch.holdings))) == texts
    for text in texts.values():
        assert text == orjson.dumps(orjson.loads(text), option=orjson.OPT_SORT_KEYS).decode()


@settings(max_examples=50, deadline=None)
@given(batches())
def test_criteria_snapshots_made_for_the_batch_are_those_made_rule_by_rule(b) -> None:
    """The rules' texts assembled for the batch at once are those of the rule-by-rule path,
    which rules of users interleaved take; each is the canonical text its hash is of."""
    user_list, fundamentals = b
    batch = to_batch(user_list, fundamentals)
    keys, payloads = criteria_snapshots(batch)
    again, texts = criteria_snapshots(dataclasses.replace(batch, rules=_interleaved(batch.rules)))
    assert keys == again and payloads.texts == texts.texts
    assert set(keys) == {u["user_id"] for u in user_list} and set(keys.values()) == set(texts)
    for h, text in texts.texts.items():
        payload = orjson.loads(text)
        assert text == orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()
        assert h == snapshot_hash(payload) and texts[h] == payload


def test_a_holding_without_a_quantity_is_a_null_in_the_inputs_snapshot() -> None:
    users = pd.DataFrame(
        {"user_id": ["u1", "u2"], "base_currency": ["USD", 'E"UR'], "contribution": [None] * 2},
        dtype=object,
    )
    classes = pd.DataFrame(columns=list(CLASS_COLUMNS), dtype=object)
    holdings = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "asset_id": ["a1", 'a"2', "a1", "a3"],
            "asset_class": ["G", "G", "Bé", "G"],
            "quantity": [Decimal("2"), None, Decimal("1E+2"), Decimal("0.10")],
        },
        dtype=object,
    )
    batch = Batch(users, classes, holdings, pd.DataFrame(), pd.DataFrame())
    rows = [["a1", "G", "2"], ['a"2', "G", None], ["a1", "Bé", "100"]]
    for uid, base, held in (("u1", "USD", rows), ("u2", 'E"UR', [["a3", "G", "0.10"]])):
        payload = {
            "assetClasses": [],
            "baseCurrency": base,
            "contribution": None,
            "holdings": {"columns": ["assetId", "assetClass", "quantity"], "rows": held},
        }
        assert own_texts(batch)[uid] == orjson.dumps(payload, option=orjson.OPT_SORT_KEYS).decode()


def test_plain_texts_are_the_plain_format_of_each_decimal() -> None:
    values = [
        Decimal("3.5"),
        Decimal("100"),
        Decimal("1E+2"),
        Decimal("0.0000001"),
        Decimal("0E-10"),
        Decimal("-0.000"),
        None,
    ]
    expected = [None if v is None else format(v, "f") for v in values]
    assert plain_texts(values) == expected
    assert plain_texts([v for v in values if v is None or "E" not in str(v)]) == [
        t for v, t in zip(values, expected, strict=True) if v is None or "E" not in str(v)
    ]
    assert plain_texts([Decimal("2.50"), float("nan")]) == ["2.50", None]
