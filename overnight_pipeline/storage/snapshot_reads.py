"""One committed state of the database for everything a batch reads (`snapshot_reads`),
planned as a batch's reads should be (`READ_SETTINGS`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

# A batch's reads select a thousandth of each table or less, by user id: through the
# user_id indexes whatever the planner's statistics say (at 10,000 users it chose a parallel
# sequential scan of all holdings, asset_classes and users for each batch, hashing every
# row's id: the CPU of ten batches per batch, and two parallel workers' start per query
# besides, at the price of a little wall time saved while the other core was busy anyway);
# JIT off because a plan with a sequential scan left in costs above its thresholds then. The
# holdings' sort of a 1,000-user batch needs ≈ 4 MB, the default work_mem: above it (a batch
# of users with more holdings) it spills to disk; room for eight times that, for one query.
# docs/PERFORMANCE.md, "The lean night (issue 25)".
READ_SETTINGS = {
    "enable_seqscan": "off",
    "max_parallel_workers_per_gather": "0",
    "jit": "off",
    "work_mem": "32MB",
}
_READ_SETTINGS_SQL = "SELECT " + ", ".join(
    f"set_config('{name}', '{value}', true)" for name, value in READ_SETTINGS.items()
)


@contextmanager
def snapshot_reads(engine: Engine) -> Iterator[Connection]:
    """A connection whose reads all see one committed state of the database, for everything
    a batch reads (`load_batch`): a concurrent `overnight load` is seen whole or not at all.

    PostgreSQL: one `REPEATABLE READ`, `READ ONLY` transaction (its snapshot is taken by the
    first statement; both modes are reset when the connection goes back to the pool).
    SQLite: one deferred transaction, begun explicitly because the driver runs each SELECT
    outside any transaction; in WAL mode its first read fixes the snapshot and writers go on.
    Rolled back at the end: it only reads.

    PostgreSQL plans the batch's reads with `READ_SETTINGS`, for that transaction only."""
    with engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            conn.exec_driver_sql(_READ_SETTINGS_SQL)
        elif conn.dialect.name == "sqlite":
            conn.exec_driver_sql("BEGIN")
        try:
            yield conn
        finally:
            conn.rollback()
