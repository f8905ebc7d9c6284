"""Each user's newest `recommendations` row and the time their inputs last changed, for many
users at once: the dashboard's batched cache-miss read (`dashboard_api.newest`).

On PostgreSQL one statement: `WHERE user_id = ANY(...)` with `DISTINCT ON (user_id)` in the
order of `storage.queries.newest_recommendation` (latest market date, then generation time),
so every user gets exactly the row that query returns (tested); on SQLite that query per
user. The same statement reads when each user's inputs last changed (`user_changes`, one
index probe per user, after `DISTINCT ON` has kept one row each; users without a row ask
`storage.freshness.newest_changes`).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Connection, any_, bindparam, func, select
from sqlalchemy.dialects import postgresql

from overnight_pipeline.storage.freshness import newest_changes
from overnight_pipeline.storage.models import recommendations_table, user_changes_table
from overnight_pipeline.storage.queries import (
    NEWEST_COLUMNS,
    PersistedRecommendation,
    newest_recommendation,
    persisted_from_row,
)

_rec = recommendations_table.c
_NEWEST = (
    select(*NEWEST_COLUMNS)
    .where(_rec.user_id == any_(bindparam("user_ids", type_=postgresql.ARRAY(_rec.user_id.type))))
    .ext(postgresql.distinct_on(_rec.user_id))
    .order_by(_rec.user_id, _rec.market_date.desc(), _rec.generated_at.desc())
    .subquery("newest")
)
_uc = user_changes_table.c
# Outside the DISTINCT ON: the change is looked up for the row kept, not for every row read.
_QUERY = select(
    *_NEWEST.c,
    select(func.max(_uc.changed_at)).where(_uc.user_id == _NEWEST.c.user_id).scalar_subquery(),
)


@dataclass(frozen=True)
class Newest:
    """A user's newest row (None: nothing computed yet) and when their inputs last changed."""

    row: PersistedRecommendation | None
    changed_at: datetime | None


def newest_rows(conn: Connection, user_ids: list[uuid.UUID]) -> dict[uuid.UUID, Newest]:
    """Each user's newest row and last change: one statement on PostgreSQL (and one more
    for the users without a row)."""
    if conn.dialect.name != "postgresql":
        changes = newest_changes(conn, user_ids)
        return {u: Newest(newest_recommendation(conn, user_id=u), changes.get(u)) for u in user_ids}
    found = {
        row[0]: Newest(
            persisted_from_row(row[:-1]), None if row[-1] is None else row[-1].astimezone(UTC)
        )
        for row in conn.execute(_QUERY, {"user_ids": user_ids})
    }
    rest = [u for u in user_ids if u not in found]
    changes = newest_changes(conn, rest)
    found.update({u: Newest(None, changes.get(u)) for u in rest})
    return found
