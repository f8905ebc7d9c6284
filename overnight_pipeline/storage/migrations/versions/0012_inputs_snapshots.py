"""INPUTS_CAPTURED format 5: the user's own inputs as a snapshot

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07

Issue 25: `INPUTS_CAPTURED` of format 5 keeps only references; the user's own inputs (base
currency, contribution, asset classes, holdings by asset id), which format 4 repeated every
night, are a content-addressed snapshot of kind `inputs` in `calculation_snapshots`, stored
once per month like the criteria snapshots (`core.captured_reader.own_inputs`). The upgrade
lets the table hold that kind; events are never rewritten. The downgrade rewrites format-5
events as format 3 (the inputs put back in from the snapshot they reference, holdings by
asset id: the format revision 0011's code reads and its downgrade leaves alone), then
removes the `inputs` snapshots and the kind.
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

_NAME = "ck_calculation_snapshots_known_kind"
_KINDS = "kind IN ('market', 'criteria', 'inputs')"
_OLD_KINDS = "kind IN ('market', 'criteria')"
_OWN = ("baseCurrency", "contribution", "assetClasses", "holdings")


def _kinds(condition: str) -> None:
    if op.get_bind().dialect.name == "postgresql":
        # On the partitioned table: every month's partition gets the constraint.
        op.execute(f"ALTER TABLE calculation_snapshots DROP CONSTRAINT {_NAME}")
        op.execute(f"ALTER TABLE calculation_snapshots ADD CONSTRAINT {_NAME} CHECK ({condition})")
        return
    with op.batch_alter_table("calculation_snapshots", schema=None) as batch_op:
        batch_op.drop_constraint(op.f(_NAME), type_="check")
        batch_op.create_check_constraint(op.f(_NAME), condition)


def upgrade() -> None:
    _kinds(_KINDS)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        own = " || ".join(f"jsonb_build_object('{name}', s.payload -> '{name}')" for name in _OWN)
        op.execute(
            "UPDATE calculation_events e SET payload = (e.payload - 'inputs') || "
            + own
            + " || '{\"format\": 3}'::jsonb"
            " FROM (SELECT DISTINCT ON (hash) hash, payload FROM calculation_snapshots"
            " WHERE kind = 'inputs' ORDER BY hash) s"
            " WHERE e.event_type = 'INPUTS_CAPTURED' AND e.payload ->> 'format' = '5'"
            " AND s.hash = e.payload ->> 'inputs'"
        )
    else:
        # json_extract of an object or array is its JSON text: json() keeps it JSON.
        own = ", ".join(
            f"'$.{name}', json(json_extract(s.payload, '$.{name}'))"
            if name in ("assetClasses", "holdings")
            else f"'$.{name}', json_extract(s.payload, '$.{name}')"
            for name in _OWN
        )
        found = (
            "FROM calculation_snapshots s WHERE s.kind = 'inputs'"
            " AND s.hash = json_extract(calculation_events.payload, '$.inputs')"
        )
        op.execute(
            "UPDATE calculation_events SET payload = (SELECT json_set(json_remove("
            "calculation_events.payload, '$.inputs'), '$.format', 3, " + own + ")"
            f" {found} LIMIT 1)"
            " WHERE event_type = 'INPUTS_CAPTURED' AND json_extract(payload, '$.format') = 5"
            f" AND EXISTS (SELECT 1 {found})"
        )
    op.execute("DELETE FROM calculation_snapshots WHERE kind = 'inputs'")
    _kinds(_OLD_KINDS)
