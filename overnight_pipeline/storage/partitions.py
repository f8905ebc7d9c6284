"""Monthly partitions of the audit tables on PostgreSQL (BEHAVIOUR §4, issue 15).

`calculation_events`, `calculation_assets`, `calculation_snapshots` and
`overnight_job_runs` are declared `PARTITION BY RANGE` of a time column (migration 0004);
each month is its own table, `<table>_pYYYY_MM`, created ahead of the writes that need it
by `ensure_months` (the pipeline calls it before a calculation's first write, the job-run
writers before theirs, the retention job for the coming months). Retention detaches and
drops whole months (`drop_months_before`): a catalog operation, whatever the rows.

The partition key of a calculation's rows is its `calculated_at`: the creation time of the
run's root run, the same for the run, its step retries and its re-executions (like the
correlation id). A retried step therefore writes into the partition of its first attempt,
and the unique key (correlation id, user, type, calculated_at) refuses a duplicate there.

SQLite (the demo) has no partitions: the same tables are plain tables and retention
deletes in batches (`storage.retention`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from sqlalchemy import Connection, text

# table → its partition key (a timestamptz, except the snapshots' month, a date)
PARTITIONED: dict[str, str] = {
    "calculation_events": "calculated_at",
    "calculation_assets": "calculated_at",
    "calculation_snapshots": "month",
    "overnight_job_runs": "started_at",
}
_DATE_KEYS = {"calculation_snapshots"}
# Each month of the events keeps its payloads inline, compressed (`payload` has STORAGE MAIN
# and lz4 on the parent, migration 0004). PostgreSQL looks at a row for compression only
# past TOAST_TUPLE_THRESHOLD (≈ 2 KB, fixed when the server is built; a smaller row is stored
# as it is, whatever this option says); such a row's payload is then compressed towards 128
# bytes of row rather than stopping at 2 KB, and stays in the row instead of two TOAST chunks
# (fewer bytes per user-night: docs/PERFORMANCE.md, "Figures once quoted in the code").
TABLE_OPTIONS = {"calculation_events": " WITH (toast_tuple_target = 128)"}
PARTITION_NAME = re.compile(r"^(?P<table>[a-z_]+)_p(?P<year>\d{4})_(?P<month>\d{2})$")
MONTHS_AHEAD = 2
"""The retention job keeps this many months beyond the current one created."""


def month_of(moment: datetime | date) -> date:
    """The first day of the (UTC) month of `moment`."""
    if isinstance(moment, datetime):
        if moment.tzinfo is None:
            raise ValueError(f"calculated_at: {moment.isoformat()} has no time zone")
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def next_month(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def partition_name(table: str, month: date) -> str:
    return f"{table}_p{month.year:04d}_{month.month:02d}"


def is_partition(name: str) -> bool:
    """Whether `name` is one of our monthly partitions (not a table of the models)."""
    found = PARTITION_NAME.match(name)
    return found is not None and found["table"] in PARTITIONED


def include_name(name: str | None, type_: str, _parents: object) -> bool:
    """Alembic's autogenerate filter: it compares the models' tables, not the monthly
    partitions of four of them, which exist only in the database."""
    return not (type_ == "table" and name is not None and is_partition(name))


def _bound(table: str, month: date) -> str:
    return month.isoformat() if table in _DATE_KEYS else f"{month.isoformat()} 00:00:00+00"


def ensure_months(conn: Connection, moments: Iterable[datetime | date]) -> list[str]:
    """Create the monthly partitions of every partitioned table for the months of
    `moments` that do not have them yet; returns the partitions created. A no-op on
    SQLite. Commits nothing: call it in its own transaction (`engine.begin()`), before the
    writes that need it, so that a writer never holds the table lock it takes."""
    if conn.dialect.name != "postgresql":
        return []
    months = sorted({month_of(m) for m in moments})
    # One cheap catalog query per call, no cache: a month created in a transaction that
    # is then rolled back must not be remembered. Creating takes turns (shards start
    # together); the others then find the months made.
    present = set(existing(conn))
    if all((t, m) in present for m in months for t in PARTITIONED):
        return []
    conn.execute(text("SELECT pg_advisory_xact_lock(hashtext('overnight:partitions'))"))
    present = set(existing(conn))
    created = []
    for month in months:
        for table in PARTITIONED:
            name = partition_name(table, month)
            if (table, month) in present:
                continue
            conn.execute(
                text(
                    f"CREATE TABLE {name} PARTITION OF {table} FOR VALUES FROM "
                    f"('{_bound(table, month)}') TO ('{_bound(table, next_month(month))}')"
                    + TABLE_OPTIONS.get(table, "")
                )
            )
            created.append(name)
    return created


def existing(conn: Connection) -> dict[tuple[str, date], str]:
    """(table, month) → partition name, of the partitions attached to our tables."""
    rows = conn.execute(
        text(
            "SELECT parent.relname, child.relname FROM pg_inherits i"
            " JOIN pg_class parent ON parent.oid = i.inhparent"
            " JOIN pg_class child ON child.oid = i.inhrelid"
            " WHERE parent.relname = ANY(:tables)"
        ),
        {"tables": list(PARTITIONED)},
    ).all()
    found: dict[tuple[str, date], str] = {}
    for parent, child in rows:
        match = PARTITION_NAME.match(child)
        if match and match["table"] == parent:
            found[(parent, date(int(match["year"]), int(match["month"]), 1))] = child
    return found


@dataclass(frozen=True)
class DroppedMonth:
    table: str
    month: date
    rows: int  # the planner's estimate (pg_class.reltuples): counting would scan the month


def drop_months_before(
    conn: Connection, cutoff: datetime, *, lock_timeout: str = "5s"
) -> list[DroppedMonth]:
    """Detach and drop every monthly partition whose whole month is before `cutoff` (a
    month ending after it is kept: data is kept at least until the cutoff). Each table's
    detach waits at most `lock_timeout` for the writers of the table; the caller commits."""
    if conn.dialect.name != "postgresql":
        raise ValueError("partitions exist on PostgreSQL only")
    conn.execute(text(f"SET LOCAL lock_timeout = '{lock_timeout}'"))
    dropped = []
    for (table, month), name in sorted(existing(conn).items()):
        if datetime(*next_month(month).timetuple()[:3], tzinfo=UTC) > cutoff:
            continue
        rows = conn.execute(
            text("SELECT greatest(reltuples, 0)::bigint FROM pg_class WHERE relname = :n"),
            {"n": name},
        ).scalar_one()
        conn.execute(text(f"ALTER TABLE {table} DETACH PARTITION {name}"))
        conn.execute(text(f"DROP TABLE {name}"))
        dropped.append(DroppedMonth(table, month, int(rows)))
    return dropped
