"""audit tables by month: calculated_at, monthly partitions on PostgreSQL

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04

- `calculation_events` gets `calculated_at`, the creation time of the calculation's root
  run (the same for its retries and re-executions): the partition key, part of the primary
  key (id, calculated_at) and of the unique key (correlation_id, user_id, event_type,
  calculated_at). Existing events get their calculation's first event time.
- `calculation_assets.created_at` becomes `calculated_at` (the same value as its events').
- `calculation_snapshots` is keyed (hash, month) and also holds `criteria` snapshots (a
  criteria version's rules, referenced by `INPUTS_CAPTURED` of format 3): a snapshot is stored in the month of each
  calculation that references it, so it lives exactly as long as they do. Existing
  snapshots are copied into each month whose events reference them; an unreferenced one
  has nothing to serve and is not copied.
- `overnight_job_runs` is keyed (id, started_at); `run_id` is indexed (PostgreSQL cannot
  keep a unique key without the partition key; the writers keep one row per run id).

On PostgreSQL the events' payloads are kept compressed in the row (STORAGE MAIN, months
created WITH (toast_tuple_target = 128)). The four tables become `PARTITION BY RANGE` of
those columns, one partition
per month (`<table>_pYYYY_MM`), created here for every month the data covers plus the
current and the next (the pipeline creates later ones ahead); the rows are copied and the
old tables dropped, in the migration's one transaction. The retention indexes on
`created_at` go (retention drops partitions). SQLite keeps plain tables, with indexes on
the columns its batched retention deletes by.

Downgrade copies the rows back into the plain tables of 0003 (a market snapshot once per
hash); `INPUTS_CAPTURED` events of format 3 get their criteria snapshot's rules back
(format 2), so every event stays replayable by revision 0003's code.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import sqlalchemy as sa
from alembic import op

import overnight_pipeline.storage.types as types

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

OLD = "_0003"
TABLES = ("calculation_events", "calculation_assets", "calculation_snapshots", "overnight_job_runs")
KEYS = {
    "calculation_events": "calculated_at",
    "calculation_assets": "calculated_at",
    "calculation_snapshots": "month",
    "overnight_job_runs": "started_at",
}


def _stamp() -> types.UTCDateTime:
    return types.UTCDateTime(timezone=True)


def _now() -> sa.TextClause:
    return sa.text("CURRENT_TIMESTAMP")


def _payload() -> sa.types.TypeEngine[object]:
    return types.Document


def _postgresql() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _set_aside(table: str) -> None:
    """Rename `table` (and, on PostgreSQL, its indexes and constraints' indexes, whose names
    are schema-wide) out of the way of its successor; SQLite drops its named indexes."""
    bind = op.get_bind()
    names = sa.inspect(bind).get_indexes(table)
    if _postgresql():
        for name in bind.execute(
            sa.text("SELECT indexname FROM pg_indexes WHERE tablename = :t"), {"t": table}
        ).scalars():
            op.execute(f'ALTER INDEX "{name}" RENAME TO "{name[:57]}{OLD}"')
    else:
        for index in names:
            op.execute(f'DROP INDEX "{index["name"]}"')
    op.rename_table(table, table + OLD)


def _job_run_columns() -> list[sa.SchemaItem]:
    """`overnight_job_runs` but for its key (id and started_at) and key constraints."""
    return [
        sa.Column("run_id", sa.String(length=64), nullable=True),
        sa.Column("job_type", sa.String(length=50), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("completed_at", _stamp(), nullable=True),
        sa.Column("users_processed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("users_failed", sa.Integer(), server_default="0", nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("error_details", _payload(), nullable=True),
        sa.Column("metrics", _payload(), nullable=True),
        sa.Column("market", sa.String(length=16), nullable=True),
        sa.Column("market_date", sa.Date(), nullable=True),
        sa.CheckConstraint(
            "status IN ('started', 'completed', 'failed', 'partial')",
            name=op.f("ck_overnight_job_runs_known_status"),
        ),
        sa.CheckConstraint(
            "users_processed >= 0 AND users_failed >= 0",
            name=op.f("ck_overnight_job_runs_counts_positive"),
        ),
    ]


def _create(postgresql: bool) -> None:
    def by(table: str) -> dict[str, str]:
        return {"postgresql_partition_by": f"RANGE ({KEYS[table]})"} if postgresql else {}

    id_column = (
        sa.Column(
            "id",
            sa.BigInteger(),
            server_default=sa.text("nextval('calculation_events_id_seq'::regclass)"),
            nullable=False,
        )
        if postgresql
        else sa.Column("id", sa.Integer(), autoincrement=True, nullable=False)
    )
    op.create_table(
        "calculation_events",
        # Fixed-width columns first, widest first: no alignment padding in the rows.
        id_column,
        sa.Column("calculated_at", _stamp(), nullable=False),
        sa.Column("created_at", _stamp(), server_default=_now(), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("payload", _payload(), nullable=False),
        sa.CheckConstraint(
            "event_type IN ('CALC_STARTED', 'INPUTS_CAPTURED', 'SCORES_COMPUTED', "
            "'CALC_COMPLETED')",
            name=op.f("ck_calculation_events_known_event_type"),
        ),
        # SQLite: `id` alone, the rowid (assigned on insert); PostgreSQL: with the key.
        sa.PrimaryKeyConstraint(
            *(("id", "calculated_at") if postgresql else ("id",)),
            name=op.f("pk_calculation_events"),
        ),
        sa.UniqueConstraint(
            "correlation_id",
            "user_id",
            "event_type",
            "calculated_at",
            name=op.f("uq_calculation_events_correlation_id_user_id_event_type_calculated_at"),
        ),
        **by("calculation_events"),
    )
    op.create_index(
        "ix_calculation_events_user_created", "calculation_events", ["user_id", "created_at"]
    )
    op.create_table(
        "calculation_assets",
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        # Before the variable-width score: no padding to align it (≈ 25 % of the row).
        sa.Column("calculated_at", _stamp(), nullable=False),
        sa.Column("score", types.ExactDecimal(precision=16, scale=4), nullable=False),
        **by("calculation_assets"),
    )
    op.create_index(
        "ix_calculation_assets_asset_newest", "calculation_assets", ["asset_id", "calculated_at"]
    )
    op.create_index(
        "ix_calculation_assets_user_asset", "calculation_assets", ["user_id", "asset_id"]
    )
    op.create_table(
        "calculation_snapshots",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", _payload(), nullable=False),
        sa.Column("created_at", _stamp(), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('market', 'criteria')", name=op.f("ck_calculation_snapshots_known_kind")
        ),
        sa.PrimaryKeyConstraint("hash", "month", name=op.f("pk_calculation_snapshots")),
        **by("calculation_snapshots"),
    )
    op.create_table(
        "overnight_job_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("started_at", _stamp(), nullable=False),
        *_job_run_columns(),
        sa.PrimaryKeyConstraint("id", "started_at", name=op.f("pk_overnight_job_runs")),
        **by("overnight_job_runs"),
    )
    op.create_index(
        "ix_overnight_job_runs_market_date", "overnight_job_runs", ["market", "market_date"]
    )
    op.create_index("ix_overnight_job_runs_started_at", "overnight_job_runs", ["started_at"])
    if postgresql:
        op.create_index("ix_overnight_job_runs_run_id", "overnight_job_runs", ["run_id"])
        bind = op.get_bind()
        if (bind.dialect.server_version_info or (0,)) >= (14,):
            for table in ("calculation_events", "calculation_snapshots"):
                op.execute(f"ALTER TABLE {table} ALTER COLUMN payload SET COMPRESSION lz4")
        # Payloads compressed in the row rather than moved to TOAST (each month is created
        # with toast_tuple_target = 128, `storage.partitions`).
        op.execute("ALTER TABLE calculation_events ALTER COLUMN payload SET STORAGE MAIN")
    else:
        # The batched retention's (PostgreSQL drops partitions instead), and one row per run.
        op.create_index(
            "ix_calculation_events_calculated_at", "calculation_events", ["calculated_at"]
        )
        op.create_index(
            "ix_calculation_assets_calculated_at", "calculation_assets", ["calculated_at"]
        )
        op.create_index(
            "ix_overnight_job_runs_run_id", "overnight_job_runs", ["run_id"], unique=True
        )


def _month(value: object) -> date:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return date(moment.year, moment.month, 1)


def _next(month: date) -> date:
    return date(month.year + month.month // 12, month.month % 12 + 1, 1)


def _create_months(months: set[date]) -> None:
    for month in sorted(months):
        for table, key in KEYS.items():
            low, high = month.isoformat(), _next(month).isoformat()
            if key != "month":
                low, high = f"{low} 00:00:00+00", f"{high} 00:00:00+00"
            options = " WITH (toast_tuple_target = 128)" if table == "calculation_events" else ""
            op.execute(
                f"CREATE TABLE IF NOT EXISTS {table}_p{month.year:04d}_{month.month:02d}"
                f" PARTITION OF {table} FOR VALUES FROM ('{low}') TO ('{high}'){options}"
            )


def upgrade() -> None:
    postgresql = _postgresql()
    bind = op.get_bind()
    for table in TABLES:
        _set_aside(table)
    if postgresql:
        op.execute("ALTER SEQUENCE calculation_events_id_seq OWNED BY NONE")
    _create(postgresql)
    if postgresql:
        op.execute("ALTER SEQUENCE calculation_events_id_seq OWNED BY calculation_events.id")
    # Each calculation's start: its first event (a calculation without events left, its
    # index rows' own time).
    op.execute(
        "CREATE TEMPORARY TABLE calculation_starts AS SELECT correlation_id,"
        f" min(created_at) AS calculated_at FROM calculation_events{OLD} GROUP BY correlation_id"
    )
    if postgresql:
        months = {
            _month(v)
            for v in bind.execute(
                sa.text(
                    "SELECT calculated_at FROM calculation_starts UNION"
                    f" SELECT created_at FROM calculation_assets{OLD} UNION"
                    f" SELECT started_at FROM overnight_job_runs{OLD}"
                )
            ).scalars()
        }
        now = datetime.now(UTC)
        months |= {_month(now), _next(_month(now))}
        _create_months(months)
    op.execute(
        "INSERT INTO calculation_events (id, calculated_at, correlation_id, user_id,"
        " event_type, payload, created_at) SELECT e.id, s.calculated_at, e.correlation_id,"
        f" e.user_id, e.event_type, e.payload, e.created_at FROM calculation_events{OLD} e"
        " JOIN calculation_starts s ON s.correlation_id = e.correlation_id"
    )
    op.execute(
        "INSERT INTO calculation_assets (asset_id, correlation_id, user_id, score,"
        " calculated_at) SELECT a.asset_id, a.correlation_id, a.user_id, a.score,"
        f" coalesce(s.calculated_at, a.created_at) FROM calculation_assets{OLD} a"
        " LEFT JOIN calculation_starts s ON s.correlation_id = a.correlation_id"
    )
    # A snapshot in every month whose events reference it.
    if postgresql:
        reference, month = "e.payload ->> 'snapshot'", "date_trunc('month', e.calculated_at"
        month += " AT TIME ZONE 'UTC')::date"
    else:
        reference = "json_extract(e.payload, '$.snapshot')"
        month = "strftime('%Y-%m-01', e.calculated_at)"
    op.execute(
        "INSERT INTO calculation_snapshots (hash, month, kind, payload, created_at)"
        f" SELECT s.hash, r.month, s.kind, s.payload, s.created_at FROM calculation_snapshots{OLD} s"
        f" JOIN (SELECT DISTINCT {reference} AS hash, {month} AS month"
        " FROM calculation_events e WHERE e.event_type = 'INPUTS_CAPTURED') r"
        " ON r.hash = s.hash"
    )
    columns = (
        "id, started_at, run_id, job_type, status, completed_at, users_processed,"
        " users_failed, correlation_id, error_details, metrics, market, market_date"
    )
    op.execute(
        f"INSERT INTO overnight_job_runs ({columns}) SELECT {columns} FROM overnight_job_runs{OLD}"
    )
    op.execute("DROP TABLE calculation_starts")
    for table in TABLES:
        op.drop_table(table + OLD)
    if postgresql:
        for table in TABLES:
            op.execute(f"ANALYZE {table}")


def downgrade() -> None:
    postgresql = _postgresql()
    for table in TABLES:
        _set_aside(table)
    if postgresql:
        op.execute("ALTER SEQUENCE calculation_events_id_seq OWNED BY NONE")
    op.create_table(
        "calculation_events",
        sa.Column(
            "id",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            autoincrement=True,
            nullable=False,
            **(
                {"server_default": sa.text("nextval('calculation_events_id_seq'::regclass)")}
                if postgresql
                else {}
            ),
        ),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("event_type", sa.String(length=32), nullable=False),
        sa.Column("payload", _payload(), nullable=False),
        sa.Column("created_at", _stamp(), server_default=_now(), nullable=False),
        sa.CheckConstraint(
            "event_type IN ('CALC_STARTED', 'INPUTS_CAPTURED', 'SCORES_COMPUTED', "
            "'CALC_COMPLETED')",
            name=op.f("ck_calculation_events_known_event_type"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_calculation_events")),
        sa.UniqueConstraint(
            "correlation_id",
            "user_id",
            "event_type",
            name=op.f("uq_calculation_events_correlation_id_user_id_event_type"),
        ),
    )
    if postgresql:
        op.execute("ALTER SEQUENCE calculation_events_id_seq OWNED BY calculation_events.id")
    op.create_index("ix_calculation_events_created_at", "calculation_events", ["created_at"])
    op.create_index(
        "ix_calculation_events_user_created", "calculation_events", ["user_id", "created_at"]
    )
    op.create_table(
        "calculation_assets",
        sa.Column("asset_id", sa.Uuid(), nullable=False),
        sa.Column("correlation_id", sa.Uuid(), nullable=False),
        sa.Column("user_id", sa.Uuid(), nullable=False),
        sa.Column("score", types.ExactDecimal(precision=16, scale=4), nullable=False),
        sa.Column("created_at", _stamp(), server_default=_now(), nullable=False),
    )
    op.create_index(
        "ix_calculation_assets_asset_newest", "calculation_assets", ["asset_id", "created_at"]
    )
    op.create_index(
        "ix_calculation_assets_user_asset", "calculation_assets", ["user_id", "asset_id"]
    )
    op.create_index("ix_calculation_assets_created_at", "calculation_assets", ["created_at"])
    op.create_table(
        "calculation_snapshots",
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("payload", _payload(), nullable=False),
        sa.Column("created_at", _stamp(), server_default=_now(), nullable=False),
        sa.CheckConstraint("kind IN ('market')", name=op.f("ck_calculation_snapshots_known_kind")),
        sa.PrimaryKeyConstraint("hash", name=op.f("pk_calculation_snapshots")),
    )
    op.create_table(
        "overnight_job_runs",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("started_at", _stamp(), nullable=False),
        *_job_run_columns(),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_overnight_job_runs")),
        sa.UniqueConstraint("run_id", name=op.f("uq_overnight_job_runs_run_id")),
    )
    op.create_index(
        "ix_overnight_job_runs_market_date", "overnight_job_runs", ["market", "market_date"]
    )
    op.create_index("ix_overnight_job_runs_started_at", "overnight_job_runs", ["started_at"])
    if postgresql and (op.get_bind().dialect.server_version_info or (0,)) >= (14,):
        for table in ("calculation_events", "calculation_snapshots"):
            op.execute(f"ALTER TABLE {table} ALTER COLUMN payload SET COMPRESSION lz4")
    op.execute(
        "INSERT INTO calculation_events (id, correlation_id, user_id, event_type, payload,"
        " created_at) SELECT id, correlation_id, user_id, event_type, payload, created_at"
        f" FROM calculation_events{OLD}"
    )
    # Revision 0003 knows no criteria snapshots: their rules go back into the events.
    if postgresql:
        op.execute(
            "UPDATE calculation_events e SET payload = jsonb_set(e.payload, '{criteria}',"
            " jsonb_build_object('version', e.payload -> 'criteria' -> 'version', 'rules',"
            " s.payload -> 'rules')) || '{\"format\": 2}'::jsonb"
            " FROM (SELECT DISTINCT ON (hash) hash, payload FROM"
            f" calculation_snapshots{OLD} WHERE kind = 'criteria' ORDER BY hash) s"
            " WHERE e.event_type = 'INPUTS_CAPTURED' AND e.payload ->> 'format' = '3'"
            " AND s.hash = e.payload -> 'criteria' ->> 'snapshot'"
        )
    else:
        op.execute(
            "UPDATE calculation_events SET payload = json_set(payload, '$.format', 2,"
            " '$.criteria', json_object('version', json_extract(payload, '$.criteria.version'),"
            " 'rules', json((SELECT json_extract(s.payload, '$.rules') FROM"
            f" calculation_snapshots{OLD} s WHERE s.kind = 'criteria'"
            " AND s.hash = json_extract(calculation_events.payload, '$.criteria.snapshot')"
            " LIMIT 1)))) WHERE event_type = 'INPUTS_CAPTURED'"
            " AND json_extract(payload, '$.format') = 3"
        )
    op.execute(
        "INSERT INTO calculation_assets (asset_id, correlation_id, user_id, score, created_at)"
        f" SELECT asset_id, correlation_id, user_id, score, calculated_at FROM calculation_assets{OLD}"
    )
    op.execute(
        "INSERT INTO calculation_snapshots (hash, kind, payload, created_at)"
        " SELECT hash, min(kind), min(payload), min(created_at)"
        f" FROM calculation_snapshots{OLD} WHERE kind = 'market' GROUP BY hash"
        if not postgresql
        else "INSERT INTO calculation_snapshots (hash, kind, payload, created_at)"
        " SELECT DISTINCT ON (hash) hash, kind, payload, created_at"
        f" FROM calculation_snapshots{OLD} WHERE kind = 'market' ORDER BY hash, month"
    )
    columns = (
        "id, started_at, run_id, job_type, status, completed_at, users_processed,"
        " users_failed, correlation_id, error_details, metrics, market, market_date"
    )
    op.execute(
        f"INSERT INTO overnight_job_runs ({columns}) SELECT {columns} FROM overnight_job_runs{OLD}"
    )
    for table in TABLES:
        op.drop_table(table + OLD)  # on PostgreSQL, with its partitions
