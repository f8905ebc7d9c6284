from __future__ import annotations

import copy
import json
import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection, select, text

from overnight_pipeline.cli import main
from overnight_pipeline.core.load_file import LoadFileError, parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.storage.loader import active_criteria, load
from overnight_pipeline.storage.models import Base, CriteriaVersion, Holding

MARKETS = load_markets()
USER = "6f1c0000-0000-4000-8000-000000000001"


def sample() -> dict[str, Any]:
    return {
        "assets": [
            {"market": "NYSE", "symbol": "KO", "currency": "USD", "name": "Coca-Cola"},
            {"market": "B3", "symbol": "ITSA4", "currency": "BRL"},
        ],
        "users": [{
            "id": USER, "baseCurrency": "USD", "defaultContribution": "1000.00", "active": True,
            "assetClasses": [
                {"name": "US Stocks", "targetMin": "40", "targetMax": "60", "maxAssets": 5,
                 "minAllocationValue": "50.00"},
                {"name": "Brazil", "targetMin": "10", "targetMax": "30"},
            ],
            "holdings": [
                {"market": "NYSE", "symbol": "KO", "quantity": "10", "assetClass": "US Stocks"},
                {"market": "B3", "symbol": "ITSA4", "quantity": "120.5", "assetClass": "Brazil"},
            ],
            "criteria": [
                {"id": "dy", "assetClass": "US Stocks", "metric": "dividend_yield",
                 "operator": "gt", "value": "3", "points": 10},
                {"id": "pe", "assetClass": "Brazil", "metric": "pe_ratio", "operator": "between",
                 "value": "5", "value2": "15.50", "points": -20},
            ],
        }],
    }  # fmt: skip


def _load(conn: Connection, raw: dict[str, Any]):
    return load(conn, parse_load_file(raw, markets=MARKETS))


def _snapshot(conn: Connection) -> dict[str, list[tuple[Any, ...]]]:
    return {
        name: sorted(map(tuple, conn.execute(select(table))), key=repr)
        for name, table in Base.metadata.tables.items()
    }


def test_loading_twice_changes_nothing(db_conn: Connection) -> None:
    first = _load(db_conn, sample())
    assert (first.users, first.holdings, first.criteria_versions_created) == (1, 2, 1)
    before = _snapshot(db_conn)
    second = _load(db_conn, sample())
    assert second.criteria_versions_created == 0
    assert _snapshot(db_conn) == before


def test_changed_criteria_create_a_new_immutable_version(db_conn: Connection) -> None:
    _load(db_conn, sample())
    edited = sample()
    edited["users"][0]["criteria"][0]["points"] = 15
    assert _load(db_conn, edited).criteria_versions_created == 1
    version, rules = active_criteria(db_conn, [uuid.UUID(USER)])[uuid.UUID(USER)]
    assert version == 2
    assert [r.points for r in rules] == [15, -20]
    versions = db_conn.execute(
        select(CriteriaVersion.version).order_by(CriteriaVersion.version)
    ).scalars()
    assert list(versions) == [1, 2]
    # Version 1 is kept as it was.
    old = db_conn.execute(text(
        "SELECT r.points FROM criteria_rules r JOIN criteria_versions v ON v.id = r.criteria_version_id"
        " WHERE v.version = 1 ORDER BY r.position")).scalars()  # fmt: skip
    assert list(old) == [10, -20]


def test_numerically_equal_criteria_do_not_create_a_version(db_conn: Connection) -> None:
    _load(db_conn, sample())
    same = sample()
    same["users"][0]["criteria"][1]["value2"] = "15.5000"
    assert _load(db_conn, same).criteria_versions_created == 0


def test_rules_come_back_as_written(db_conn: Connection) -> None:
    _load(db_conn, sample())
    _, rules = active_criteria(db_conn, [uuid.UUID(USER)])[uuid.UUID(USER)]
    assert [(r.value, r.value2) for r in rules] == [
        (Decimal("3"), None),
        (Decimal("5"), Decimal("15.5")),
    ]
    assert format(rules[1].value2, "f") == "15.5"


def test_holdings_missing_from_the_file_are_removed(db_conn: Connection) -> None:
    _load(db_conn, sample())
    fewer = sample()
    del fewer["users"][0]["holdings"][1]
    fewer["users"][0]["holdings"][0]["quantity"] = "12"
    _load(db_conn, fewer)
    rows = db_conn.execute(select(Holding.quantity)).scalars().all()
    assert rows == [Decimal("12")]


def test_a_file_with_three_errors_reports_all_three_and_writes_nothing(db_conn: Connection) -> None:
    bad = sample()
    bad["users"][0]["holdings"][0]["quantity"] = "-3"
    bad["users"][0]["assetClasses"][1]["targetMax"] = "120"
    bad["users"][0]["criteria"][0]["operator"] = "approximately"
    with pytest.raises(LoadFileError) as info:
        parse_load_file(bad, markets=MARKETS)
    paths = {e.path: e.value for e in info.value.errors}
    assert paths == {
        "$.users[0].holdings[0].quantity": Decimal("-3"),
        "$.users[0].assetClasses[1].targetMax": Decimal("120"),
        "$.users[0].criteria[0].operator": "approximately",
    }
    assert len(info.value.errors) == 3
    assert "nothing was written" in str(info.value)


def test_cross_references_are_checked(db_conn: Connection) -> None:
    bad = sample()
    bad["users"][0]["holdings"][0]["assetClass"] = "Crypto"
    bad["users"][0]["criteria"][1]["assetClass"] = "Nope"
    bad["users"][0]["holdings"][1]["market"] = "MOON"
    with pytest.raises(LoadFileError) as info:
        parse_load_file(bad, markets=MARKETS)
    assert {e.path for e in info.value.errors} == {
        "$.users[0].holdings[0].assetClass",
        "$.users[0].criteria[1].assetClass",
        "$.users[0].holdings[1].market",
    }


def test_float_amounts_are_refused_with_the_field_named() -> None:
    bad = sample()
    bad["users"][0]["defaultContribution"] = 1000.1
    with pytest.raises(LoadFileError) as info:
        parse_load_file(bad, markets=MARKETS)
    (error,) = info.value.errors
    assert error.path == "$.users[0].defaultContribution"
    assert "decimal string" in error.message and error.value == 1000.1


def test_unknown_asset_in_holdings_is_rejected_before_any_write(db_conn: Connection) -> None:
    bad = sample()
    bad["users"][0]["holdings"].append(
        {"market": "NYSE", "symbol": "ZZZZ", "quantity": "1", "assetClass": "US Stocks"}
    )
    before = db_conn.execute(text("SELECT count(*) FROM users")).scalar()
    with pytest.raises(LoadFileError, match="ZZZZ"):
        _load(db_conn, bad)
    assert db_conn.execute(text("SELECT count(*) FROM users")).scalar() == before


def test_cli_load_reports_errors_and_exit_code(tmp_path, capsys, monkeypatch, sqlite_url) -> None:
    from overnight_pipeline.settings import get_settings

    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    get_settings.cache_clear()
    bad = copy.deepcopy(sample())
    bad["users"][0]["baseCurrency"] = "dollars"
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    try:
        assert main(["load", str(path)]) == 2
        err = capsys.readouterr().err
        assert (
            "$.users[0].baseCurrency" in err and "'dollars'" in err and "nothing was written" in err
        )
        path.write_text("{not json")
        assert main(["load", str(path)]) == 2
        assert "line 1 column 2" in capsys.readouterr().err
    finally:
        get_settings.cache_clear()
