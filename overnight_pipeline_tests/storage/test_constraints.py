"""Every BEHAVIOUR §1 constraint rejects a bad row, on PostgreSQL and on SQLite."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Connection
from sqlalchemy.exc import IntegrityError

from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    calculation_events_table,
    criteria_rules_table,
    criteria_versions_table,
    holdings_table,
    overnight_job_runs_table,
    users_table,
)


@pytest.fixture
def graph(db_conn: Connection) -> dict[str, Any]:
    """One valid user with a class, a holding and a criteria version."""
    ids = {k: uuid.uuid4() for k in ("user", "other_user", "asset", "cls", "other_cls", "crit")}
    db_conn.execute(
        assets_table.insert(),
        [{"id": ids["asset"], "market": "NYSE", "symbol": "KO", "currency": "USD"}],
    )
    db_conn.execute(
        users_table.insert(),
        [
            {"id": ids["user"], "base_currency": "USD", "default_contribution": Decimal("100")},
            {"id": ids["other_user"], "base_currency": "USD", "default_contribution": None},
        ],
    )
    db_conn.execute(
        asset_classes_table.insert(),
        [
            {
                "id": ids["cls"],
                "user_id": ids["user"],
                "name": "Stocks",
                "target_min": Decimal(40),
                "target_max": Decimal(60),
            },
            {
                "id": ids["other_cls"],
                "user_id": ids["other_user"],
                "name": "Stocks",
                "target_min": Decimal(0),
                "target_max": Decimal(100),
            },
        ],
    )
    db_conn.execute(
        criteria_versions_table.insert(),
        [{"id": ids["crit"], "user_id": ids["user"], "version": 1}],
    )
    return {"conn": db_conn, **ids}


def _rejects(conn: Connection, table: Any, row: dict[str, Any]) -> None:
    with pytest.raises(IntegrityError):
        with conn.begin_nested():
            conn.execute(table.insert(), [row])


def _accepts(conn: Connection, table: Any, row: dict[str, Any]) -> None:
    with conn.begin_nested() as sp:
        conn.execute(table.insert(), [row])
        sp.rollback()


def _holding(g: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "user_id": g["user"],
        "asset_id": g["asset"],
        "asset_class_id": g["cls"],
        "quantity": Decimal("1"),
        **over,
    }


def _class(g: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "id": uuid.uuid4(),
        "user_id": g["user"],
        "name": f"c{uuid.uuid4().hex[:6]}",
        "target_min": Decimal(10),
        "target_max": Decimal(20),
        **over,
    }


def _rule(g: dict[str, Any], **over: Any) -> dict[str, Any]:
    return {
        "criteria_version_id": g["crit"],
        "position": 0,
        "rule_id": "r",
        "asset_class": "Stocks",
        "metric": "pe_ratio",
        "operator": "lt",
        "value": Decimal(15),
        "points": 10,
        **over,
    }


@pytest.mark.parametrize("quantity", [Decimal(0), Decimal("-1"), Decimal("-0.0001")])
def test_holding_quantity_must_be_positive(graph, quantity) -> None:
    _rejects(graph["conn"], holdings_table, _holding(graph, quantity=quantity))


def test_holding_quantity_positive_is_accepted(graph) -> None:
    _accepts(graph["conn"], holdings_table, _holding(graph, quantity=Decimal("0.0001")))


def test_holding_cannot_use_another_users_asset_class(graph) -> None:
    _rejects(graph["conn"], holdings_table, _holding(graph, asset_class_id=graph["other_cls"]))


def test_holding_is_unique_per_user_and_asset(graph) -> None:
    conn = graph["conn"]
    conn.execute(holdings_table.insert(), [_holding(graph)])
    _rejects(conn, holdings_table, _holding(graph))


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(Decimal(-1), Decimal(10)), (Decimal(50), Decimal(40)), (Decimal(10), Decimal("100.01"))],
)
def test_class_band_must_satisfy_0_le_min_le_max_le_100(graph, lo, hi) -> None:
    _rejects(graph["conn"], asset_classes_table, _class(graph, target_min=lo, target_max=hi))


def test_class_band_edges_are_accepted(graph) -> None:
    _accepts(
        graph["conn"],
        asset_classes_table,
        _class(graph, target_min=Decimal(0), target_max=Decimal(100)),
    )
    _accepts(
        graph["conn"],
        asset_classes_table,
        _class(graph, target_min=Decimal(30), target_max=Decimal(30)),
    )


def test_class_max_assets_and_min_allocation_must_be_positive(graph) -> None:
    _rejects(graph["conn"], asset_classes_table, _class(graph, max_assets=0))
    _rejects(graph["conn"], asset_classes_table, _class(graph, min_allocation_value=Decimal("-5")))


def test_class_name_is_unique_per_user(graph) -> None:
    _rejects(graph["conn"], asset_classes_table, _class(graph, name="Stocks"))


@pytest.mark.parametrize("points", [101, -101, 1000])
def test_rule_points_within_minus_100_and_100(graph, points) -> None:
    _rejects(graph["conn"], criteria_rules_table, _rule(graph, points=points))


@pytest.mark.parametrize("points", [100, -100, 0])
def test_rule_points_edges_are_accepted(graph, points) -> None:
    _accepts(graph["conn"], criteria_rules_table, _rule(graph, points=points))


def test_rule_operator_and_metric_must_be_known(graph) -> None:
    _rejects(graph["conn"], criteria_rules_table, _rule(graph, operator="like"))
    _rejects(graph["conn"], criteria_rules_table, _rule(graph, metric="vibes"))


def test_rule_between_needs_ordered_bounds(graph) -> None:
    conn = graph["conn"]
    _rejects(conn, criteria_rules_table, _rule(graph, operator="between", value=Decimal(5)))
    _rejects(
        conn,
        criteria_rules_table,
        _rule(graph, operator="between", value=Decimal(9), value2=Decimal(5)),
    )
    _accepts(
        conn,
        criteria_rules_table,
        _rule(graph, operator="between", value=Decimal(5), value2=Decimal(5)),
    )


def test_rule_value_required_except_for_exists(graph) -> None:
    _rejects(graph["conn"], criteria_rules_table, _rule(graph, value=None))
    _accepts(graph["conn"], criteria_rules_table, _rule(graph, operator="exists", value=None))


def test_criteria_versions_are_unique_and_positive(graph) -> None:
    conn = graph["conn"]
    _rejects(
        conn,
        criteria_versions_table,
        {"id": uuid.uuid4(), "user_id": graph["user"], "version": 1},
    )
    _rejects(
        conn,
        criteria_versions_table,
        {"id": uuid.uuid4(), "user_id": graph["user"], "version": 0},
    )


def test_user_contribution_cannot_be_negative(graph) -> None:
    _rejects(
        graph["conn"],
        users_table,
        {"id": uuid.uuid4(), "base_currency": "USD", "default_contribution": Decimal("-0.01")},
    )


def test_events_are_unique_per_correlation_user_and_type(graph) -> None:
    from datetime import UTC, datetime

    conn = graph["conn"]
    row = {
        "correlation_id": uuid.uuid4(),
        "user_id": graph["user"],
        "event_type": "CALC_STARTED",
        "payload": {},
        "calculated_at": datetime.now(UTC),
    }
    conn.execute(calculation_events_table.insert(), [row])
    _rejects(conn, calculation_events_table, row)
    _rejects(conn, calculation_events_table, {**row, "event_type": "CALC_WHATEVER"})


def test_job_run_status_must_be_known(graph) -> None:
    from datetime import UTC, datetime

    row = {
        "id": uuid.uuid4(),
        "job_type": "scoring",
        "status": "exploded",
        "started_at": datetime.now(UTC),
        "correlation_id": uuid.uuid4(),
    }
    _rejects(graph["conn"], overnight_job_runs_table, row)
    _accepts(graph["conn"], overnight_job_runs_table, {**row, "status": "partial"})


def test_money_round_trips_exactly(graph) -> None:
    conn = graph["conn"]
    conn.execute(
        holdings_table.insert(), [_holding(graph, quantity=Decimal("123456789.0123456789"))]
    )
    got = conn.execute(holdings_table.select()).one().quantity
    assert got == Decimal("123456789.0123456789")
