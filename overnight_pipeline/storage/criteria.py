"""Criteria versions: a user's active rules, and version n+1 when a load changes them."""

from __future__ import annotations

import uuid
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, and_, func, select

from overnight_pipeline.core.scoring import Rule
from overnight_pipeline.storage.bulk import copy_rows
from overnight_pipeline.storage.keysets import keys_in
from overnight_pipeline.storage.models import criteria_rules_table, criteria_versions_table


def active_criteria(
    conn: Connection, user_ids: list[uuid.UUID]
) -> dict[uuid.UUID, tuple[int, list[Rule]]]:
    """The newest criteria version and its rules for each user, in document order."""
    v, r = criteria_versions_table, criteria_rules_table
    result: dict[uuid.UUID, tuple[int, list[Rule]]] = {}
    for wanted in keys_in(conn, [v.c.user_id], [(u,) for u in user_ids]):
        # The newest version of these users only: a load of many chunks would otherwise
        # group the whole table once per chunk.
        newest = (
            select(v.c.user_id, func.max(v.c.version).label("version"))
            .where(wanted)
            .group_by(v.c.user_id)
            .subquery()
        )
        stmt = (
            select(
                v.c.user_id,
                v.c.version,
                r.c.rule_id,
                r.c.asset_class,
                r.c.metric,
                r.c.operator,
                r.c.value,
                r.c.value2,
                r.c.points,
            )
            .join(newest, and_(newest.c.user_id == v.c.user_id, newest.c.version == v.c.version))
            .outerjoin(r, r.c.criteria_version_id == v.c.id)
            .order_by(v.c.user_id, r.c.position)
        )
        for row in conn.execute(stmt):
            _, rules = result.setdefault(row.user_id, (row.version, []))
            if row.rule_id is not None:
                rules.append(
                    Rule(
                        id=row.rule_id,
                        asset_class=row.asset_class,
                        metric=row.metric,
                        operator=row.operator,
                        value=_plain(row.value),
                        value2=_plain(row.value2),
                        points=row.points,
                    )
                )
    return result


def _plain(value: Decimal | None) -> Decimal | None:
    """NUMERIC(28,10) pads to ten places; give rules back as written (3.5, not 3.5000000000)."""
    if value is None:
        return None
    normal = value.normalize()
    return normal.quantize(Decimal(1)) if normal == normal.to_integral() else normal


def write_criteria_versions(
    conn: Connection, criteria: dict[uuid.UUID, list[Rule]], *, now: datetime
) -> int:
    """Create version n+1 for each user whose rules differ from the active version."""
    current = active_criteria(conn, list(criteria))
    versions: list[dict[str, Any]] = []
    rules: list[dict[str, Any]] = []
    for user_id, new_rules in criteria.items():
        version, old_rules = current.get(user_id, (0, []))
        # Rules compare numerically (3.10 == 3.1), so re-loading an edit-free file is a no-op.
        if old_rules == new_rules:
            continue
        version_id = uuid.uuid4()
        versions.append(
            {"id": version_id, "user_id": user_id, "version": version + 1, "created_at": now}
        )
        rules.extend(
            {
                "criteria_version_id": version_id,
                "position": pos,
                "rule_id": rule.id,
                "asset_class": rule.asset_class,
                "metric": rule.metric,
                "operator": rule.operator,
                "value": rule.value,
                "value2": rule.value2,
                "points": rule.points,
            }
            for pos, rule in enumerate(new_rules)
        )
    for table, rows in ((criteria_versions_table, versions), (criteria_rules_table, rules)):
        if rows:
            copy_rows(conn, table, list(rows[0]), [list(row.values()) for row in rows])
    return len(versions)
