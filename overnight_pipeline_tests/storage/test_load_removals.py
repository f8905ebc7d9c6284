"""A load that removes many holdings finishes in seconds under PostgreSQL's default settings
(issue 23: a row-value IN list of 5,000 pairs was JIT-compiled for more than 8 minutes)."""

from __future__ import annotations

import time
import uuid
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, event, func, select, text

from overnight_pipeline.core.load_file import parse_load_file
from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.storage.loader import load
from overnight_pipeline.storage.models import holdings_table
from overnight_pipeline_tests.support.removals import (
    ASSETS,
    KEPT,
    OTHERS,
    USERS,
    seed_holdings,
    selling_file,
)


def _holdings(conn: Connection, users: list[uuid.UUID]) -> set[tuple[uuid.UUID, uuid.UUID]]:
    t = holdings_table
    rows = conn.execute(select(t.c.user_id, t.c.asset_id).where(t.c.user_id.in_(users)))
    return {(u, a) for u, a in rows}


def test_a_load_removing_10000_holdings_finishes_in_seconds(db_conn: Connection) -> None:
    users, assets, symbols = seed_holdings(db_conn)
    sellers, others = users[:USERS], users[USERS:]
    postgres = db_conn.dialect.name == "postgresql"
    if postgres:
        # A regression fails instead of hanging (LLVM compilation is not cancellable: the
        # timeout fires once it ends). JIT stays at the server's defaults.
        db_conn.execute(text("SET LOCAL statement_timeout = '30s'"))
        # The statistics autovacuum keeps after a bulk write; with none, the planner
        # underestimates the table and the slow plan does not show.
        db_conn.execute(text("ANALYZE holdings, assets, asset_classes, users"))
    doc = parse_load_file(selling_file(sellers, symbols), markets=load_markets())

    executed: list[tuple[str, Any]] = []

    def record(conn, cursor, statement, parameters, context, executemany) -> None:  # type: ignore[no-untyped-def]
        # An executemany (the upserts) is one statement per row, planned alike.
        executed.append((statement, parameters[0] if executemany else parameters))

    event.listen(db_conn, "before_cursor_execute", record)
    started = time.perf_counter()
    try:
        report = load(db_conn, doc)
    finally:
        event.remove(db_conn, "before_cursor_execute", record)
    seconds = time.perf_counter() - started

    assert report.holdings == USERS * KEPT
    kept = {(u, a) for u in sellers for a in assets[:KEPT]}
    assert _holdings(db_conn, sellers) == kept
    assert len(_holdings(db_conn, others)) == OTHERS * ASSETS
    q = holdings_table.c.quantity
    assert db_conn.execute(select(func.count()).where(q == Decimal(4))).scalar() == USERS
    # A hang guard, not a speed target (that is bench/load_removals_bench.py's): about 0.3 s
    # on an idle machine, 5.6 s seen under the parallel suite on a slow one; the issue's
    # regression took minutes. The same bound as PostgreSQL's statement_timeout above.
    assert seconds < 30, f"the load took {seconds:.1f} s"

    if postgres:
        # Every statement the load ran is planned below the cost where the server's
        # defaults JIT-compile (the old 5,000-pair DELETE: 154,000 here, 518,730 in the
        # issue), so no plan depends on how many holdings the file removes.
        jit_above = float(
            db_conn.execute(text("SELECT current_setting('jit_above_cost')")).scalar_one()
        )
        assert any(s.startswith("DELETE FROM holdings") for s, _ in executed)
        for statement, parameters in executed:
            plan = db_conn.exec_driver_sql(
                "EXPLAIN (FORMAT JSON) " + statement, parameters
            ).scalar_one()[0]
            assert "JIT" not in plan, statement
            assert plan["Plan"]["Total Cost"] < jit_above, (plan["Plan"]["Total Cost"], statement)
