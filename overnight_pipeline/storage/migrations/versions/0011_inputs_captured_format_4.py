"""INPUTS_CAPTURED format 4: a downgrade names the held assets by id again

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07

Issue 25: `INPUTS_CAPTURED` of format 4 names each held asset by the position of its row in
the market snapshot the event references (`core.captured_reader`); the tables do not change,
so the upgrade does nothing. The downgrade rewrites those events as format 3 (each holding's
asset id read from that snapshot), the format the code of revision 0010 and below writes:
revision 0004's downgrade turns format 3 into format 2 when it removes the criteria
snapshots, and would leave a format-4 event unreadable.
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_COLUMNS = '["assetId", "assetClass", "quantity"]'


def upgrade() -> None:
    pass


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(
            "UPDATE calculation_events e SET payload = jsonb_set(jsonb_set(e.payload,"
            " '{holdings}', jsonb_build_object('columns', '" + _COLUMNS + "'::jsonb, 'rows',"
            " COALESCE((SELECT jsonb_agg(jsonb_build_array("
            " s.payload -> 'assets' -> 'rows' -> ((h.row ->> 0)::int) -> 0, h.row -> 1, h.row -> 2)"
            " ORDER BY h.n) FROM jsonb_array_elements(e.payload -> 'holdings' -> 'rows')"
            " WITH ORDINALITY h(row, n)), '[]'::jsonb))), '{format}', '3')"
            " FROM (SELECT DISTINCT ON (hash) hash, payload FROM calculation_snapshots"
            " WHERE kind = 'market' ORDER BY hash) s"
            " WHERE e.event_type = 'INPUTS_CAPTURED' AND e.payload ->> 'format' = '4'"
            " AND s.hash = e.payload ->> 'snapshot'"
        )
        return
    op.execute(
        "UPDATE calculation_events SET payload = json_set(payload, '$.format', 3,"
        " '$.holdings', json_object('columns', json('" + _COLUMNS + "'), 'rows',"
        " (SELECT json_group_array(json_array(json_extract(s.payload, '$.assets.rows['"
        " || json_extract(h.value, '$[0]') || '][0]'), json_extract(h.value, '$[1]'),"
        " json_extract(h.value, '$[2]')))"
        " FROM json_each(json_extract(calculation_events.payload, '$.holdings.rows')) h,"
        " (SELECT payload FROM calculation_snapshots WHERE kind = 'market'"
        " AND hash = json_extract(calculation_events.payload, '$.snapshot') LIMIT 1) s)))"
        " WHERE event_type = 'INPUTS_CAPTURED' AND json_extract(payload, '$.format') = 4"
    )
