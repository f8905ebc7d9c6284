"""`overnight load` records each user whose result-relevant inputs changed (issue 23 item 2)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import Connection, select

from overnight_pipeline.core.load_errors import LoadFileError
from overnight_pipeline.storage.models import user_changes_table
from overnight_pipeline_tests.storage.test_load import USER, _load, sample

OTHER = "6f1c0000-0000-4000-8000-000000000002"


def _two_users() -> dict[str, Any]:
    doc = sample()
    other = {**sample()["users"][0], "id": OTHER}
    doc["users"].append(other)
    return doc


def _changes(conn: Connection) -> list[tuple[str, list[str]]]:
    t = user_changes_table
    rows = conn.execute(
        select(t.c.user_id, t.c.what).where(t.c.processed_at.is_(None)).order_by(t.c.id)
    )
    return [(str(u), list(w)) for u, w in rows]


def _after_first_load(conn: Connection) -> list[tuple[str, list[str]]]:
    _load(conn, _two_users())
    created = _changes(conn)
    conn.execute(user_changes_table.delete())
    return created


def test_a_new_user_is_recorded_as_created(db_conn: Connection) -> None:
    assert _after_first_load(db_conn) == [(USER, ["created"]), (OTHER, ["created"])]


def test_reloading_the_same_file_records_nothing(db_conn: Connection) -> None:
    _after_first_load(db_conn)
    report = _load(db_conn, _two_users())
    assert report.users_changed == 0
    assert _changes(db_conn) == []


def _edit(change: str) -> dict[str, Any]:
    doc = _two_users()
    user = doc["users"][0]
    if change == "contribution":
        user["defaultContribution"] = "5000.00"
    elif change == "sold":
        user["holdings"] = user["holdings"][:1]
    elif change == "quantity":
        user["holdings"][0]["quantity"] = "11"
    elif change == "criteria":
        user["criteria"][0]["value"] = "4"
    elif change == "inactive":
        user["active"] = False
    elif change == "band":
        user["assetClasses"][1]["targetMax"] = "35"
    elif change == "currency":
        user["baseCurrency"] = "BRL"
    elif change == "numerically-equal":
        user["defaultContribution"] = "1000.0000"
        user["holdings"][1]["quantity"] = "120.50"
    return doc


@pytest.mark.parametrize(
    ("change", "what"),
    [
        ("contribution", ["contribution"]),
        ("sold", ["holdings"]),
        ("quantity", ["holdings"]),
        ("criteria", ["criteria"]),
        ("inactive", ["active"]),
        ("band", ["classes"]),
        ("currency", ["baseCurrency"]),
    ],
)
def test_a_change_records_one_row_saying_what_changed(
    db_conn: Connection, change: str, what: list[str]
) -> None:
    _after_first_load(db_conn)
    report = _load(db_conn, _edit(change))
    assert report.users_changed == 1
    assert _changes(db_conn) == [(USER, what)]
    t = user_changes_table
    changed_at = db_conn.scalar(select(t.c.changed_at))
    assert changed_at is not None and changed_at.tzinfo is not None


def test_numerically_equal_values_are_no_change(db_conn: Connection) -> None:
    _after_first_load(db_conn)
    _load(db_conn, _edit("numerically-equal"))
    assert _changes(db_conn) == []


def test_several_changes_of_one_user_make_one_row(db_conn: Connection) -> None:
    _after_first_load(db_conn)
    doc = _edit("contribution")
    doc["users"][0]["holdings"] = doc["users"][0]["holdings"][:1]
    doc["users"][0]["active"] = False
    _load(db_conn, doc)
    assert _changes(db_conn) == [(USER, ["contribution", "active", "holdings"])]


def test_a_refused_file_records_nothing(db_conn: Connection) -> None:
    _after_first_load(db_conn)
    bad = _edit("contribution")
    bad["users"][0]["holdings"].append(
        {"market": "NYSE", "symbol": "NOPE", "quantity": "1", "assetClass": "US Stocks"}
    )
    with pytest.raises(LoadFileError):
        _load(db_conn, bad)
    assert _changes(db_conn) == []


def test_changes_are_read_in_a_fixed_number_of_statements(db_conn: Connection) -> None:
    from sqlalchemy import event

    doc = _two_users()
    for n in range(40):
        user = {**sample()["users"][0], "id": str(uuid.UUID(int=n + 1000))}
        doc["users"].append(user)
    _load(db_conn, doc)
    for user in doc["users"]:
        user["defaultContribution"] = "2000"
    statements: list[str] = []

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    event.listen(db_conn, "before_cursor_execute", seen)
    try:
        _load(db_conn, doc)
    finally:
        event.remove(db_conn, "before_cursor_execute", seen)
    # Independent of the number of users (42): the four reads before, the four after, the
    # loader's own statements and the one insert.
    assert len(statements) < 30
    assert [what for _, what in _changes(db_conn)] == [["created"]] * 42 + [["contribution"]] * 42
