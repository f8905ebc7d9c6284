from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import unicodedata
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, Engine, inspect, select, text

from overnight_pipeline.cli import main
from overnight_pipeline.core.load_errors import LoadFileError
from overnight_pipeline.core.load_fields import (
    AMOUNT,
    PERCENT,
    QUANTITY,
    RULE_VALUE,
    TEXT_LENGTHS,
    Numeric,
)
from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.load_json import decode_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.storage.criteria import active_criteria
from overnight_pipeline.storage.db import make_engine, migrate
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import Base, CriteriaVersion, Holding
from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database

OVERNIGHT = str(Path(sys.executable).with_name("overnight"))

MARKETS = load_markets()
USER = "6f1c0000-0000-4000-8000-000000000001"


def sample() -> dict[str, Any]:
    return {
        "assets": [
            {"market": "NYSE", "symbol": "KO", "currency": "USD", "name": "Coca-Cola"},
            {"market": "B3", "symbol": "ITSA4", "currency": "BRL"},
        ],
        "users": [
            {
                "id": USER,
                "baseCurrency": "USD",
                "defaultContribution": "1000.00",
                "active": True,
                "assetClasses": [
                    {
                        "name": "US Stocks",
                        "targetMin": "40",
                        "targetMax": "60",
                        "maxAssets": 5,
                        "minAllocationValue": "50.00",
                    },
                    {"name": "Brazil", "targetMin": "10", "targetMax": "30"},
                ],
                "holdings": [
                    {"market": "NYSE", "symbol": "KO", "quantity": "10", "assetClass": "US Stocks"},
                    {
                        "market": "B3",
                        "symbol": "ITSA4",
                        "quantity": "120.5",
                        "assetClass": "Brazil",
                    },
                ],
                "criteria": [
                    {
                        "id": "dy",
                        "assetClass": "US Stocks",
                        "metric": "dividend_yield",
                        "operator": "gt",
                        "value": "3",
                        "points": 10,
                    },
                    {
                        "id": "pe",
                        "assetClass": "Brazil",
                        "metric": "pe_ratio",
                        "operator": "between",
                        "value": "5",
                        "value2": "15.50",
                        "points": -20,
                    },
                ],
            }
        ],
    }


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
    old = db_conn.execute(
        text(
            "SELECT r.points FROM criteria_rules r JOIN criteria_versions v ON v.id = r.criteria_version_id"
            " WHERE v.version = 1 ORDER BY r.position"
        )
    ).scalars()
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


# -- bad input of every kind (issue 13 §1) ----------------------------------------------------


@pytest.mark.parametrize(
    ("where", "value", "path", "message"),
    [
        (
            ("users", 0, "holdings", 0, "quantity"),
            "1e30",
            "$.users[0].holdings[0].quantity",
            "at most 18 digits before the decimal point",
        ),
        (
            ("users", 0, "defaultContribution"),
            "1e25",
            "$.users[0].defaultContribution",
            "at most 16 digits before the decimal point",
        ),
        (
            ("users", 0, "criteria", 0, "value"),
            "1e40",
            "$.users[0].criteria[0].value",
            "at most 18 digits before the decimal point",
        ),
        (
            ("users", 0, "assetClasses", 0, "maxAssets"),
            10**12,
            "$.users[0].assetClasses[0].maxAssets",
            "less than or equal to 2147483647",
        ),
        (
            ("users", 0, "holdings", 0, "quantity"),
            "0.00000000001",
            "$.users[0].holdings[0].quantity",
            "11 digits after the decimal point; at most 10",
        ),
        (
            ("users", 0, "defaultContribution"),
            "10.12345",
            "$.users[0].defaultContribution",
            "at most 4 are kept",
        ),
        (("assets", 0, "name"), "Coca\x00Cola", "$.assets[0].name", "control character U+0000"),
        (("assets", 0, "symbol"), "K\ud800", "$.assets[0].symbol", "valid string"),
        (("users", 0, "baseCurrency"), "ZZZ", "$.users[0].baseCurrency", "ISO 4217"),
        (("assets", 0, "currency"), "QQQ", "$.assets[0].currency", "ISO 4217"),
        (("users", 0, "active"), "yes", "$.users[0].active", "valid boolean"),
        (("users", 0, "active"), 1, "$.users[0].active", "valid boolean"),
        (
            ("users", 0, "assetClasses", 0, "maxAssets"),
            "5",
            "$.users[0].assetClasses[0].maxAssets",
            "valid integer",
        ),
        (
            ("users", 0, "assetClasses", 0, "maxAssets"),
            True,
            "$.users[0].assetClasses[0].maxAssets",
            "valid integer",
        ),
        (
            ("users", 0, "criteria", 0, "points"),
            10.0,
            "$.users[0].criteria[0].points",
            "valid integer",
        ),
        (
            ("users", 0, "criteria", 0, "value"),
            "1_000",
            "$.users[0].criteria[0].value",
            "decimal string",
        ),
        (
            ("users", 0, "holdings", 0, "quantity"),
            "١٢",
            "$.users[0].holdings[0].quantity",
            "decimal string",
        ),
    ],
)
def test_values_the_columns_cannot_hold_are_refused_by_path_and_value(
    where: tuple[Any, ...], value: Any, path: str, message: str
) -> None:
    bad = sample()
    target: Any = bad
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    with pytest.raises(LoadFileError) as info:
        parse_load_file(bad, markets=MARKETS)
    (error,) = info.value.errors
    assert error.path == path
    assert message in error.message
    assert error.value == value


def test_a_huge_value_is_shown_shortened() -> None:
    bad = sample()
    bad["users"][0]["defaultContribution"] = "9" * 1_000_000
    bad["users"][0]["holdings"][0]["symbol"] = "S" * 1_000_000
    with pytest.raises(LoadFileError) as info:
        parse_load_file(bad, markets=MARKETS)
    text = str(info.value)
    assert len(text) < 1000
    assert "$.users[0].defaultContribution" in text and "(1,000,000 characters)" in text
    assert "$.users[0].holdings[0].symbol" in text


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (json.dumps(sample()).encode("utf-16"), "the file is UTF-16"),
        (json.dumps(sample()).encode("utf-16-le"), "looks UTF-16 or UTF-32"),
        (json.dumps(sample()).encode("utf-32"), "the file is UTF-32"),
        (
            b'{"assets": [], "users": [{"id": "\xff"}]}',
            "not UTF-8: byte 0xff at line 1 column 34 (byte 33)",
        ),
        ('{"assets": "é"}'.encode("latin-1"), "not UTF-8: byte 0xe9"),
        (b"[" * 100_000 + b"]" * 100_000, "nested deeper than 1024 levels"),
        (b'{"assets": ' + b"[" * 5000 + b"]" * 5000 + b"}", "nested deeper than 1024 levels"),
        (b"", "the file is empty"),
        (b"{not json", "not valid JSON at line 1 column 2"),
        (b'{"users": [], "assets": [}', "not valid JSON at line 1 column 26"),
        (
            b'{"users": [], "assets": [1,]}',
            "not valid JSON at line 1 column 28: Expecting value",
        ),
    ],
)
def test_encodings_and_nesting_are_refused_with_a_clear_message(data: bytes, message: str) -> None:
    with pytest.raises(LoadFileError) as info:
        decode_load_file(data)
    (error,) = info.value.errors
    assert error.path == "$" and message in error.message


def test_a_utf8_byte_order_mark_is_skipped() -> None:
    assert decode_load_file(b"\xef\xbb\xbf" + json.dumps(sample()).encode()) == sample()


def test_the_declared_limits_are_the_columns() -> None:
    """core cannot import storage: its column limits are checked against the models here."""

    def numeric(table: str, column: str) -> Numeric:
        col = Base.metadata.tables[table].c[column].type
        return Numeric(col.precision, col.scale)  # type: ignore[attr-defined]

    assert numeric("users", "default_contribution") == AMOUNT
    assert numeric("asset_classes", "min_allocation_value") == AMOUNT
    assert numeric("asset_classes", "target_min") == PERCENT
    assert numeric("asset_classes", "target_max") == PERCENT
    assert numeric("holdings", "quantity") == QUANTITY
    assert numeric("criteria_rules", "value") == RULE_VALUE
    assert numeric("criteria_rules", "value2") == RULE_VALUE
    lengths = {
        "market": ("assets", "market"),
        "symbol": ("assets", "symbol"),
        "asset_name": ("assets", "name"),
        "class_name": ("asset_classes", "name"),
        "rule_id": ("criteria_rules", "rule_id"),
    }
    for key, (table, column) in lengths.items():
        assert Base.metadata.tables[table].c[column].type.length == TEXT_LENGTHS[key]  # type: ignore[attr-defined]
    assert (
        Base.metadata.tables["criteria_rules"].c["asset_class"].type.length
        == TEXT_LENGTHS["class_name"]
    )  # type: ignore[attr-defined]


# Values that are wrong for the field they land in, whatever the field.
_hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False),
    st.text(max_size=30),
    st.just("1e40"),
    st.just("1e-30"),
    st.just("ZZZ"),
    st.just("a\x00b"),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
_FIELDS = [
    ("assets", 0, "market"),
    ("assets", 0, "symbol"),
    ("assets", 0, "currency"),
    ("assets", 0, "name"),
    ("users", 0, "id"),
    ("users", 0, "baseCurrency"),
    ("users", 0, "defaultContribution"),
    ("users", 0, "active"),
    ("users", 0, "assetClasses", 0, "targetMin"),
    ("users", 0, "assetClasses", 0, "maxAssets"),
    ("users", 0, "assetClasses", 0, "minAllocationValue"),
    ("users", 0, "holdings", 0, "quantity"),
    ("users", 0, "criteria", 0, "value"),
    ("users", 0, "criteria", 0, "points"),
    ("users", 0, "criteria", 0, "operator"),
]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.lists(st.tuples(st.sampled_from(_FIELDS), _hostile), min_size=1, max_size=4))
def test_any_malformed_document_is_refused_by_path_or_loads_cleanly(
    pg_engine: Engine, changes: list[tuple[tuple[Any, ...], Any]]
) -> None:
    """Whatever garbage lands in whichever fields: either a LoadFileError naming only paths
    that exist, or a load the database accepts (never a database error)."""
    doc = sample()
    for where, value in changes:
        target: Any = doc
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
    try:
        parsed = parse_load_file(doc, markets=MARKETS)
    except LoadFileError as exc:
        assert exc.errors
        for error in exc.errors:
            assert error.path.startswith("$") and len(str(error)) < 700
        return
    with pg_engine.connect() as conn:
        trans = conn.begin()
        try:
            load(conn, parsed)
        except LoadFileError:
            pass  # a holding of an asset nobody has: refused before any write
        finally:
            trans.rollback()


# -- the real `overnight load` command: exit code, message, database unchanged ----------------


def _overnight(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "MARKET"))}
    full.update(env)
    return subprocess.run(
        [OVERNIGHT, *args], env=full, capture_output=True, text=True, timeout=120, check=False
    )


def dump(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to compare a database before and after."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            names = sorted(inspect(conn).get_table_names())
            return {
                n: sorted(map(tuple, conn.execute(text(f'SELECT * FROM "{n}"'))), key=repr)
                for n in names
            }
    finally:
        engine.dispose()


@pytest.fixture(scope="module")
def loaded_pg() -> Iterator[str]:
    """A migrated PostgreSQL database holding the sample file, committed."""
    url = create_pg_database("overnight_load")
    migrate(url)
    engine = make_engine(url)
    with engine.begin() as conn:
        _load(conn, sample())
    engine.dispose()
    yield url
    drop_pg_database(url)


def _bad_files() -> dict[str, tuple[bytes, str]]:
    def edited(where: tuple[Any, ...], value: Any) -> bytes:
        doc: Any = sample()
        target = doc
        for key in where[:-1]:
            target = target[key]
        target[where[-1]] = value
        return json.dumps(doc).encode()

    return {
        "utf16": (json.dumps(sample()).encode("utf-16"), "$: the file is UTF-16"),
        "latin1": ('{"users": [{"id": "é"}]}'.encode("latin-1"), "$: not UTF-8: byte 0xe9"),
        "deep": (b"[" * 50_000 + b"]" * 50_000, "$: nested deeper than 1024 levels"),
        "quantity": (
            edited(("users", 0, "holdings", 0, "quantity"), "1e30"),
            "$.users[0].holdings[0].quantity: is too large",
        ),
        "tiny": (
            edited(("users", 0, "holdings", 0, "quantity"), "1e-11"),
            "$.users[0].holdings[0].quantity: has 11 digits after the decimal point",
        ),
        "nul": (
            edited(("assets", 0, "name"), "Coca\x00Cola"),
            "$.assets[0].name: contains the control character U+0000",
        ),
        "currency": (
            edited(("users", 0, "baseCurrency"), "ZZZ"),
            "$.users[0].baseCurrency: is not an ISO 4217 currency code",
        ),
        "active": (
            edited(("users", 0, "active"), "yes"),
            "$.users[0].active: Input should be a valid boolean (got 'yes')",
        ),
        "huge": (edited(("users", 0, "assets"), "x" * 1_000_000), "(1,000,000 characters)"),
    }


@pytest.mark.parametrize("kind", list(_bad_files()))
def test_overnight_load_refuses_bad_files_exit_2_database_unchanged(
    kind: str, tmp_path: Path, loaded_pg: str
) -> None:
    data, message = _bad_files()[kind]
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    before = dump(loaded_pg)
    done = _overnight("load", str(path), env={"DATABASE_URL": loaded_pg})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "nothing was written" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr) < 2000
    assert dump(loaded_pg) == before


def test_overnight_load_missing_file_or_directory_exit_2(tmp_path: Path, sqlite_url: str) -> None:
    done = _overnight("load", str(tmp_path / "nope.json"), env={"DATABASE_URL": sqlite_url})
    assert (done.returncode, done.stderr.strip()) == (
        2,
        f"error: {tmp_path / 'nope.json'}: no such file",
    )
    done = _overnight("load", str(tmp_path), env={"DATABASE_URL": sqlite_url})
    assert (
        done.returncode == 2 and "cannot read it" in done.stderr and "Traceback" not in done.stderr
    )


def test_overnight_load_on_sqlite_refuses_and_keeps_the_database(
    tmp_path: Path, sqlite_url: str
) -> None:
    data, message = _bad_files()["quantity"]
    path = tmp_path / "bad.json"
    path.write_bytes(data)
    before = dump(sqlite_url)
    done = _overnight("load", str(path), env={"DATABASE_URL": sqlite_url})
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    assert dump(sqlite_url) == before


def test_a_database_error_mid_load_rolls_back_exit_3(tmp_path: Path, loaded_pg: str) -> None:
    """A real failure after the users were upserted (a trigger refusing holdings): the whole
    load is rolled back and reported in one line."""
    engine = make_engine(loaded_pg)
    with engine.begin() as conn:
        conn.execute(
            text(
                "CREATE FUNCTION drill_refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'drill: holdings are read-only'; END $$;"
                " CREATE TRIGGER drill BEFORE INSERT OR UPDATE ON holdings"
                " FOR EACH ROW EXECUTE FUNCTION drill_refuse()"
            )
        )
    try:
        edited = sample()
        edited["users"][0]["defaultContribution"] = "2000"
        edited["users"][0]["holdings"][0]["quantity"] = "11"
        path = tmp_path / "ok.json"
        path.write_text(json.dumps(edited))
        before = dump(loaded_pg)
        done = _overnight("load", str(path), env={"DATABASE_URL": loaded_pg})
        assert done.returncode == 3, done.stderr
        assert (
            "drill: holdings are read-only" in done.stderr and "nothing was written" in done.stderr
        )
        assert "Traceback" not in done.stderr
        assert dump(loaded_pg) == before
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TRIGGER drill ON holdings; DROP FUNCTION drill_refuse()"))
        engine.dispose()


def test_an_unmigrated_database_is_a_database_error_exit_3(tmp_path: Path) -> None:
    url = create_pg_database("overnight_empty")
    try:
        path = tmp_path / "ok.json"
        path.write_text(json.dumps(sample()))
        done = _overnight("load", str(path), env={"DATABASE_URL": url})
        assert done.returncode == 3 and 'relation "assets" does not exist' in done.stderr
        assert "Traceback" not in done.stderr
        assert dump(url) == {}
    finally:
        drop_pg_database(url)


def test_overnight_load_good_file_exit_0(tmp_path: Path, loaded_pg: str) -> None:
    path = tmp_path / "ok.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(sample()).encode())
    before = dump(loaded_pg)
    done = _overnight("load", str(path), env={"DATABASE_URL": loaded_pg})
    assert done.returncode == 0, done.stderr
    assert "0 new criteria version(s), 0 user(s) changed" in done.stdout
    after = dump(loaded_pg)
    assert {k: v for k, v in after.items() if k != "users"} == {
        k: v for k, v in before.items() if k != "users"
    }  # loading again only touches users.updated_at


# -- files that say two things, or hide characters (issue 21 items 5 and 6) --------------------


def _text() -> str:
    """The sample file as JSON text, one key per line, to edit as text."""
    return json.dumps(sample(), indent=1)


def _edit(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


def _errors(data: str | bytes) -> list[str]:
    """Every error `decode_load_file` then `parse_load_file` report, as printed."""
    with pytest.raises(LoadFileError) as info:
        parse_load_file(
            decode_load_file(data.encode() if isinstance(data, str) else data), markets=MARKETS
        )
    return [str(e) for e in info.value.errors]


def _refused(data: str | bytes, tmp_path: Path, url: str) -> str:
    """`overnight load` on `data`: exit 2 with no traceback and the database unchanged."""
    path = tmp_path / "bad.json"
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    before = dump(url)
    done = _overnight("load", str(path), env={"DATABASE_URL": url})
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert "nothing was written" in done.stderr and "Traceback" not in done.stderr
    assert dump(url) == before
    return done.stderr


_QUANTITY_TWICE = ('"quantity": "10"', '"quantity": "10", "quantity": "99999"')
_ACTIVE_TWICE = ('"active": true', '"active": true, "active": false')


@pytest.mark.parametrize(
    ("edits", "expected"),
    [
        (
            [_QUANTITY_TWICE],
            [
                "$.users[0].holdings[0].quantity: given 2 times in the same object"
                " ('10', then '99999'); a key may appear once"
            ],
        ),
        (
            [_ACTIVE_TWICE],
            ["$.users[0].active: given 2 times in the same object (True, then False)"],
        ),
        (
            [('"name": "Coca-Cola"', '"name": "Coca-Cola", "name": "Pepsi", "name": "Coca-Cola"')],
            [
                "$.assets[0].name: given 3 times in the same object"
                " ('Coca-Cola', then 'Pepsi', then 'Coca-Cola')"
            ],
        ),
        # The document's own keys: the last "users" would silently load nobody.
        ([("\n}", ', "users": []}')], ["$.users: given 2 times in the same object ([{"]),
        # A repeated key inside the first of two values of a repeated key is found too.
        (
            [_QUANTITY_TWICE, ("\n}", ', "users": []}')],
            [
                "$.users: given 2 times",
                "$.users[0].holdings[0].quantity: given 2 times",
            ],
        ),
    ],
)
def test_a_key_given_twice_is_refused_by_path(
    edits: list[tuple[str, str]], expected: list[str]
) -> None:
    text = _text()
    for old, new in edits:
        text = _edit(text, old, new)
    errors = _errors(text)
    assert len(errors) == len(expected), errors
    for error, start in zip(errors, expected, strict=True):
        assert error.startswith(start), (error, start)


def test_overnight_load_refuses_repeated_keys_listing_each_database_unchanged(
    tmp_path: Path, loaded_pg: str
) -> None:
    """Before: the file loaded with the last value of each key (quantity 99999, inactive)."""
    text = _edit(_edit(_text(), *_QUANTITY_TWICE), *_ACTIVE_TWICE)
    text = _edit(text, '"currency": "BRL"', '"currency": "BRL", "currency": "USD"')
    err = _refused(text, tmp_path, loaded_pg)
    assert "3 error(s); nothing was written" in err
    for line in (
        "  $.assets[1].currency: given 2 times in the same object ('BRL', then 'USD')",
        "  $.users[0].active: given 2 times in the same object (True, then False)",
        "  $.users[0].holdings[0].quantity: given 2 times in the same object ('10', then '99999')",
    ):
        assert line in err, err


# Invisible or direction-changing characters, and line/paragraph separators (issue 21 §5).
_HIDDEN = ["\u202e", "\u2067", "\u200b", "\u200d", "\ufeff", "\u2028", "\u2029", "\u00ad"]
_IDENTIFIERS = [
    ("assets", 0, "market"),
    ("assets", 0, "symbol"),
    ("assets", 0, "currency"),
    ("users", 0, "id"),
    ("users", 0, "baseCurrency"),
    ("users", 0, "assetClasses", 0, "name"),
    ("users", 0, "holdings", 0, "market"),
    ("users", 0, "holdings", 0, "symbol"),
    ("users", 0, "holdings", 0, "assetClass"),
    ("users", 0, "criteria", 0, "id"),
    ("users", 0, "criteria", 0, "assetClass"),
]


def _path(where: tuple[Any, ...]) -> str:
    return "$" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where)


def _set(doc: Any, where: tuple[Any, ...], edit: Any) -> Any:
    """Replace the value at `where` by `edit(old value)`; the new value."""
    for key in where[:-1]:
        doc = doc[key]
    doc[where[-1]] = edit(doc[where[-1]])
    return doc[where[-1]]


@pytest.mark.parametrize("char", _HIDDEN, ids=lambda c: f"U+{ord(c):04X}")
@pytest.mark.parametrize("where", _IDENTIFIERS, ids=_path)
def test_identifiers_holding_invisible_characters_are_refused_naming_the_code_point(
    where: tuple[Any, ...], char: str
) -> None:
    doc = sample()
    value = _set(doc, where, lambda old: old[:1] + char + old[1:])
    with pytest.raises(LoadFileError) as info:
        parse_load_file(doc, markets=MARKETS)
    (error,) = info.value.errors
    assert error.path == _path(where) and error.value == value
    assert f"contains U+{ord(char):04X} {unicodedata.name(char)} at position 1" in error.message
    assert repr(value) in str(error)  # shown escaped: the message itself reads as it is


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (" ", "is blank"),
        ("\u3000\u00a0", "is blank"),
        (" KO", "starts with U+0020 SPACE"),
        ("KO\u00a0", "ends with U+00A0 NO-BREAK SPACE"),
        ("K\x01O", "contains the control character U+0001 at position 1"),
        ("KO\n", "ends with U+000A: an identifier cannot start or end with whitespace"),
        ("\u2003KO", "starts with U+2003 EM SPACE"),
    ],
)
@pytest.mark.parametrize(
    "where",
    [("assets", 0, "symbol"), ("users", 0, "assetClasses", 0, "name"), ("users", 0, "id")],
    ids=_path,
)
def test_identifiers_that_are_blank_or_padded_are_refused(
    where: tuple[Any, ...], value: str, message: str
) -> None:
    doc = sample()
    _set(doc, where, lambda _: value)
    with pytest.raises(LoadFileError) as info:
        parse_load_file(doc, markets=MARKETS)
    (error,) = info.value.errors
    assert error.path == _path(where) and message in error.message


_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.mark.parametrize("char", _BIDI, ids=lambda c: f"U+{ord(c):04X}")
def test_names_holding_bidi_controls_are_refused(char: str) -> None:
    doc = sample()
    doc["assets"][0]["name"] = f"Coca{char}Cola"
    with pytest.raises(LoadFileError) as info:
        parse_load_file(doc, markets=MARKETS)
    (error,) = info.value.errors
    assert error.path == "$.assets[0].name"
    assert f"contains U+{ord(char):04X} {unicodedata.name(char)} at position 4" in error.message


def test_what_identifiers_and_names_may_hold() -> None:
    """Not over-refused: spaces inside, any script, and in names the joiners emoji and some
    scripts need (as characters or as escaped surrogate pairs)."""
    doc = sample()
    doc["assets"][0]["name"] = "Coca-Cola \U0001f469\u200d\U0001f4bb \u0645\u06cc\u200c\u062e\u0648"
    doc["assets"][1]["symbol"] = "ITSA4"
    doc["users"][0]["assetClasses"][1]["name"] = "日本\u3000株"
    doc["users"][0]["holdings"][1]["assetClass"] = "日本\u3000株"
    doc["users"][0]["criteria"][1]["assetClass"] = "日本\u3000株"
    for data in (json.dumps(doc), json.dumps(doc, ensure_ascii=False)):
        parsed = parse_load_file(decode_load_file(data.encode()), markets=MARKETS)
        assert parsed.assets[0].name == doc["assets"][0]["name"]
        assert parsed.users[0].asset_classes[1].name == "日本\u3000株"


def test_overnight_load_refuses_hidden_characters_listing_each_database_unchanged(
    tmp_path: Path, loaded_pg: str
) -> None:
    """`KO` is in the database: `KO\\u200b` would have been a second asset that displays
    the same; every field's problem is listed at once."""
    doc = sample()
    doc["assets"][0]["symbol"] = "KO\u200b"
    doc["assets"][0]["name"] = "Coca\u202eCola"
    doc["assets"][1]["market"] = "B3\ufeff"
    doc["users"][0]["baseCurrency"] = "\u2067USD"
    doc["users"][0]["assetClasses"][0]["name"] = "US\u200dStocks"
    doc["users"][0]["assetClasses"][1]["name"] = "   "
    doc["users"][0]["holdings"][0]["assetClass"] = "US Stocks\u2028"
    doc["users"][0]["holdings"][1]["symbol"] = "ITSA4\u2029"
    doc["users"][0]["criteria"][0]["id"] = "dy "
    err = _refused(json.dumps(doc, ensure_ascii=False), tmp_path, loaded_pg)
    assert "9 error(s); nothing was written" in err
    for line in (
        "$.assets[0].symbol: contains U+200B ZERO WIDTH SPACE at position 2",
        "$.assets[0].name: contains U+202E RIGHT-TO-LEFT OVERRIDE at position 4",
        "$.assets[1].market: contains U+FEFF ZERO WIDTH NO-BREAK SPACE at position 2",
        "$.users[0].baseCurrency: contains U+2067 RIGHT-TO-LEFT ISOLATE at position 0",
        "$.users[0].assetClasses[0].name: contains U+200D ZERO WIDTH JOINER at position 2",
        "$.users[0].assetClasses[1].name: is blank",
        "$.users[0].holdings[0].assetClass: contains U+2028 LINE SEPARATOR at position 9",
        "$.users[0].holdings[1].symbol: contains U+2029 PARAGRAPH SEPARATOR at position 5",
        "$.users[0].criteria[0].id: ends with U+0020 SPACE",
    ):
        assert f"\n  {line}" in err, (line, err)
    assert "(got 'KO\\u200b')" in err and "(got 'Coca\\u202eCola')" in err
    # Nothing in the message changes the direction of the terminal's text.
    assert not set(err) & set(_BIDI + "\u200b\u200d\ufeff\u2028\u2029")


# JSON the standard parser reads but a load file cannot hold (issue 21 §6).
_LONG = "1" + "0" * 5000


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            '"quantity": "10"',
            '"quantity": 1e400',
            "$.users[0].holdings[0].quantity: the number 1e400 is out of range (it reads as"
            " infinity)",
        ),
        (
            '"quantity": "10"',
            '"quantity": -1E+999',
            "$.users[0].holdings[0].quantity: the number -1E+999 is out of range",
        ),
        (
            '"maxAssets": 5',
            '"maxAssets": NaN',
            "$.users[0].assetClasses[0].maxAssets: NaN is not a JSON value",
        ),
        (
            '"defaultContribution": "1000.00"',
            '"defaultContribution": -Infinity',
            "$.users[0].defaultContribution: -Infinity is not a JSON value",
        ),
        (
            '"points": 10',
            f'"points": {_LONG}',
            f"$.users[0].criteria[0].points: the number {_LONG[:30]}… (5,001 characters) is out"
            " of range",
        ),
        (
            '"name": "Coca-Cola"',
            '"name": "Coca\\ud800Cola"',
            "$.assets[0].name: contains \\ud800 at position 4, half of a UTF-16 surrogate pair"
            " without its other half",
        ),
        (
            '"name": "Coca-Cola"',
            '"name": "Coca\\udfffCola\\ud83d"',
            "$.assets[0].name: contains \\udfff at position 4",
        ),
        (
            '"name": "Coca-Cola"',
            '"Coca\\udc00": "Cola"',
            "$.assets[0]['Coca\\udc00']: the key contains \\udc00 at position 4",
        ),
    ],
)
def test_json_the_parser_refuses_is_reported_by_path(old: str, new: str, expected: str) -> None:
    (error,) = _errors(_edit(_text(), old, new))
    assert error.startswith(expected), (error, expected)


def test_overnight_load_names_the_path_of_unreadable_json_values_database_unchanged(
    tmp_path: Path, loaded_pg: str
) -> None:
    """Before: one line, `$: not valid JSON at line L column C: number is infinity ...`."""
    text = _edit(_text(), '"quantity": "10"', '"quantity": 1e400')
    text = _edit(text, '"maxAssets": 5', '"maxAssets": NaN')
    text = _edit(text, '"defaultContribution": "1000.00"', '"defaultContribution": Infinity')
    text = _edit(text, '"name": "Coca-Cola"', '"name": "\\ud800"')
    text = _edit(text, '"points": 10', f'"points": {_LONG}')
    err = _refused(text, tmp_path, loaded_pg)
    assert "5 error(s); nothing was written" in err and len(err) < 2000
    for line in (
        "$.assets[0].name: contains \\ud800 at position 0",
        "$.users[0].defaultContribution: Infinity is not a JSON value",
        "$.users[0].assetClasses[0].maxAssets: NaN is not a JSON value",
        "$.users[0].holdings[0].quantity: the number 1e400 is out of range",
        f"$.users[0].criteria[0].points: the number {_LONG[:30]}… (5,001 characters)",
    ):
        assert f"\n  {line}" in err, (line, err)


def test_a_document_nested_past_the_standard_parser_is_refused_by_the_schema() -> None:
    """Between the standard parser's depth (about 1,000, less the stack in use) and orjson's
    1024: read by orjson, refused by path like any other misplaced value."""
    data = b'{"assets": ' + b"[" * 1000 + b"]" * 1000 + b', "users": []}'
    (error,) = _errors(data)
    assert error.startswith("$.assets[0]: Input should be a valid dictionary")
