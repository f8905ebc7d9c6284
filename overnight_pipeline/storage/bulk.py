"""Set-based writes that work on PostgreSQL and SQLite: upserts and COPY."""

from __future__ import annotations

import struct
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from psycopg.types.numeric import DecimalBinaryDumper
from sqlalchemy import (
    JSON,
    Column,
    Connection,
    MetaData,
    Table,
    Text,
    and_,
    cast,
    or_,
    select,
    text,
)
from sqlalchemy.dialects import postgresql, sqlite


def upsert(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
    extra_set: Mapping[str, Any] | None = None,
    newer: str | None = None,
) -> None:
    """INSERT … ON CONFLICT (key) DO UPDATE the `update` columns, only where one differs,
    so a repeated write leaves rows (and their timestamps) untouched; with `newer` (a
    column), only where the stored row's value is not after the new one (an older result
    written late never replaces a newer one)."""
    if not rows:
        return
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table)
    if not update:
        conn.execute(stmt.on_conflict_do_nothing(index_elements=list(key)), list(rows))
        return
    conn.execute(_on_conflict(stmt, table, key, update, extra_set, newer), list(rows))


def _on_conflict(
    stmt: Any,
    table: Table,
    key: Sequence[str],
    update: Sequence[str],
    extra_set: Mapping[str, Any] | None,
    newer: str | None = None,
) -> Any:
    """`stmt` … ON CONFLICT (key) DO UPDATE the `update` columns where one differs (and,
    with `newer`, where the stored value of that column is not after the new one)."""
    set_: dict[str, Any] = {c: stmt.excluded[c] for c in update}
    set_.update(extra_set or {})
    changed: Any = or_(*(table.c[c].is_distinct_from(stmt.excluded[c]) for c in update))
    if newer is not None:
        changed = and_(changed, table.c[newer] <= stmt.excluded[newer])
    return stmt.on_conflict_do_update(index_elements=list(key), set_=set_, where=changed)


def upsert_copied(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    key: Sequence[str],
    update: Sequence[str],
    extra_set: Mapping[str, Any] | None = None,
) -> None:
    """`upsert`, the rows sent to PostgreSQL by COPY into a temporary table (dropped at the
    end of the transaction), then one `INSERT … SELECT … ON CONFLICT` for them all: no
    statement per row. `upsert` elsewhere. The rows all have the same keys."""
    if conn.dialect.name != "postgresql" or not rows:
        upsert(conn, table, rows, key=key, update=update, extra_set=extra_set)
        return
    columns = list(rows[0])
    staged = f"staged_{table.name}_{len(columns)}"
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        # Through the driver: DDL and COPY are not statements anyone should EXPLAIN.
        listed = ", ".join(columns)
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staged} ON COMMIT DROP AS"
            f" SELECT {listed} FROM {table.name} WITH NO DATA"
        )
        cur.execute(f"TRUNCATE {staged}")
        with cur.copy(f"COPY {staged} ({listed}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])
    source = Table(staged, MetaData(), *(Column(c, table.c[c].type) for c in columns))
    stmt = postgresql.insert(table).from_select(columns, select(*source.c))
    conn.execute(_on_conflict(stmt, table, key, update, extra_set))


def upsert_lines(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    lines: Sequence[str] | Sequence[bytes],
    *,
    key: Sequence[str],
    update: Sequence[str],
    newer: str | None = None,
    text_columns: Sequence[str] = (),
) -> None:
    """PostgreSQL only: `upsert` of rows already formatted as COPY text `lines` (`copy_text`)
    or as binary rows (bytes, `copy_binary`): COPY into a temporary table of `columns`
    (`_staging_table`), then one `INSERT … SELECT … ON CONFLICT` for them all, with `upsert`'s
    rules (only where a column differs; with `newer`, never over a stored row whose value is
    later). The staged columns are of the table's types except JSON, staged as text (binary:
    the document's UTF-8 bytes) and cast in the SELECT: a document then enters the table
    once, compressed with the table's own TOAST method. So are the `text_columns` (a binary
    row then carries their text, parsed by the cast)."""
    if not lines:
        return
    plan = _upsert_plan(conn, table, columns, key, update, newer, text_columns)
    _staging_table(conn, table.name, plan.ddl)
    if isinstance(lines[0], bytes):
        copy_binary(conn, plan.staged, columns, lines)  # type: ignore[arg-type]
    else:
        copy_text(conn, plan.staged, columns, lines)  # type: ignore[arg-type]
    if plan.sql is None:
        conn.execute(plan.statement)
    else:
        conn.exec_driver_sql(plan.sql)


@dataclass(frozen=True)
class _UpsertPlan:
    """What `upsert_lines` sends for one table, column set and rule: the staging table's
    columns (`ddl`), the staging table, the upsert statement and its SQL (compiled once; None
    when it has parameters, or a `%` the driver's parameter style would need escaped)."""

    ddl: str
    staged: Table
    statement: Any
    sql: str | None


_UPSERT_PLANS: dict[tuple[Any, ...], _UpsertPlan] = {}


def _upsert_plan(
    conn: Connection,
    table: Table,
    columns: Sequence[str],
    key: Sequence[str],
    update: Sequence[str],
    newer: str | None,
    text_columns: Sequence[str],
) -> _UpsertPlan:
    """`upsert_lines`' statements for these arguments, made once per process (making and
    compiling them cost more of this process than the COPY of a batch's rows)."""
    dialect = conn.dialect
    cache_key: tuple[Any, ...] = (table, *map(tuple, (columns, key, update, text_columns)), newer)
    cache_key += (dialect.name, dialect.driver, dialect.server_version_info)
    found = _UPSERT_PLANS.get(cache_key)
    if found is not None:
        return found
    types = {c: table.c[c].type for c in columns}
    staged_types = {
        c: Text() if isinstance(t, JSON) or c in text_columns else t for c, t in types.items()
    }
    ddl = ", ".join(f"{c} {staged_types[c].compile(dialect=dialect)}" for c in columns)
    staged = Table(
        _staging_name(table.name, ddl),
        MetaData(),
        *(Column(c, staged_types[c]) for c in columns),
    )
    source = select(
        *(
            cast(staged.c[c], types[c]) if staged_types[c] is not types[c] else staged.c[c]
            for c in columns
        )
    )
    stmt = postgresql.insert(table).from_select(list(columns), source)
    if not update:
        statement = stmt.on_conflict_do_nothing(index_elements=list(key))
    else:
        statement = _on_conflict(stmt, table, key, update, None, newer)
    compiled = statement.compile(dialect=dialect)
    plain = not compiled.params and "%" not in compiled.string
    found = _UpsertPlan(ddl, staged, statement, compiled.string if plain else None)
    _UPSERT_PLANS[cache_key] = found
    return found


def _staging_name(name: str, ddl: str) -> str:
    """The staging table of rows of the table `name` with the columns `ddl`."""
    return f"staged_{name}_{zlib.crc32(ddl.encode()):08x}"


def _staging_table(conn: Connection, name: str, ddl: str) -> str:
    """The name of this session's temporary table of columns `ddl` for staging rows of the
    table `name`, created on the connection's first use: emptied at each commit (ON COMMIT
    DELETE ROWS, in place) rather than created and dropped in every transaction (catalog rows
    written and deleted each time, and autovacuum may be off), and never TOAST-compressed
    (`toast_tuple_target` at its maximum: a staged row is read once, by the upsert, which
    compresses what the table keeps). Its name carries a digest of `ddl`, so another column
    set gets a table of its own. Emptied here too (a DELETE, nothing to do after a commit),
    for a second staging in one transaction; rows a rolled-back transaction left are dead."""
    staged = _staging_name(name, ddl)
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        # Through the driver, both in one round trip (no parameters: the simple protocol).
        cur.execute(
            f"CREATE TEMP TABLE IF NOT EXISTS {staged} ({ddl})"
            f" WITH (toast_tuple_target = 8160) ON COMMIT DELETE ROWS; DELETE FROM {staged}"
        )
    return staged


def copy_rows(
    conn: Connection, table: Table, columns: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Bulk-insert `rows`: PostgreSQL COPY (faster than insertmanyvalues: docs/PERFORMANCE.md,
    "Figures once quoted in the code"), executemany elsewhere."""
    if conn.dialect.name != "postgresql":
        batch = [dict(zip(columns, row, strict=True)) for row in rows]
        if batch:
            conn.execute(table.insert(), batch)
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            # psycopg adapts and escapes each value in C, faster than a hand-built text
            # buffer (docs/PERFORMANCE.md, "Figures once quoted in the code").
            for row in rows:
                copy.write_row(row)


def copy_text(conn: Connection, table: Table, columns: Sequence[str], lines: Sequence[str]) -> None:
    """PostgreSQL only: COPY `lines`, each already one row in COPY's text format (tab
    separated, escaped, `\\N` for null, ending in a newline). The caller formats them with
    what it knows of its columns, cheaper than psycopg's generic `write_row` per row (which
    held the GIL in a writer thread: docs/PERFORMANCE.md, "The overnight pipeline end to
    end"), and on its own thread."""
    if not lines:
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        with cur.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
            for start in range(0, len(lines), 2000):
                copy.write("".join(lines[start : start + 2000]))


def copy_binary(
    conn: Connection, table: Table, columns: Sequence[str], rows: Sequence[bytes]
) -> None:
    """PostgreSQL only: COPY `rows`, each already one row in COPY's binary format (the field
    count, then each field's length and bytes: `binary_row`). The server then parses no text:
    a uuid[] or numeric[] arrives as its elements' bytes (an array of 30 uuids as text costs
    the backend ≈ 20 µs to parse; bench/pg_cpu_bench.py)."""
    if not rows:
        return
    raw = conn.connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur:  # type: ignore[attr-defined]
        statement = f"COPY {table.name} ({', '.join(columns)}) FROM STDIN (FORMAT BINARY)"
        with cur.copy(statement) as copy:
            # psycopg adds the trailer at the end; the signature is ours to send.
            copy.write(BINARY_SIGNATURE)
            for start in range(0, len(rows), 2000):
                copy.write(b"".join(rows[start : start + 2000]))


# COPY's binary format: each field is its length (int32, big-endian) then the type's binary
# form (what its `recv` function reads); an array element is written the same way.
BINARY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # then no flags, no header extension
_I32 = struct.Struct(">i").pack
_I64_FIELD = struct.Struct(">iq").pack
_I32_FIELD = struct.Struct(">ii").pack
_I16_FIELD = struct.Struct(">ih").pack
_ARRAY_HEAD = struct.Struct(">iiiiii").pack  # field length, 1 dimension, no nulls, oid, n, 1
_EMPTY_ARRAY = struct.Struct(">iiii").pack  # field length, 0 dimensions, no nulls, oid
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_DAY = date(2000, 1, 1).toordinal()
_MICROSECOND = timedelta(microseconds=1)
_UUID_LENGTH = _I32(16)
_DECIMAL = DecimalBinaryDumper(Decimal)
UUID_OID, VARCHAR_OID, NUMERIC_OID = 2950, 1043, 1700


def binary_uuid(value: str | uuid.UUID) -> bytes:
    """A uuid field (or array element) from its text or a UUID."""
    if isinstance(value, uuid.UUID):
        return _UUID_LENGTH + value.bytes
    data = bytes.fromhex(value.replace("-", "")) if isinstance(value, str) else b""
    if len(data) != 16:
        data = uuid.UUID(str(value)).bytes  # raises for what is not a uuid
    return _UUID_LENGTH + data


def binary_timestamptz(moment: datetime) -> bytes:
    """A timestamptz field: microseconds since 2000-01-01 UTC (integer datetimes)."""
    if moment.tzinfo is None:
        raise ValueError(f"{moment.isoformat()} has no time zone")
    return _I64_FIELD(8, (moment - _PG_EPOCH) // _MICROSECOND)


def binary_date(day: date) -> bytes:
    return _I32_FIELD(4, day.toordinal() - _PG_EPOCH_DAY)


def binary_int4(value: int) -> bytes:
    return _I32_FIELD(4, value)


def binary_int2(value: int) -> bytes:
    return _I16_FIELD(2, value)


BINARY_NULL = _I32(-1)


def binary_text(value: str | bytes) -> bytes:
    """A text or varchar field (UTF-8; the server checks the encoding and the length)."""
    data = value.encode() if isinstance(value, str) else value
    return _I32(len(data)) + data


def binary_jsonb(value: str | bytes) -> bytes:
    """A jsonb field: its format version (1), then the JSON text, parsed by the server."""
    data = value.encode() if isinstance(value, str) else value
    return _I32(len(data) + 1) + b"\x01" + data


def binary_numeric(value: str | Decimal) -> bytes:
    """A numeric field from its exact text or a Decimal: the column's type modifier then
    rounds it as it rounds the text (`numeric_recv` applies it like `numeric_in`)."""
    dumped = _DECIMAL.dump(value if isinstance(value, Decimal) else Decimal(value))
    assert dumped is not None
    data = bytes(dumped)
    return _I32(len(data)) + data


def binary_array(oid: int, count: int, body: bytes) -> bytes:
    """A one-dimensional array field of type `oid` from its `count` elements' fields, joined
    (`body`)."""
    if not count:
        return _EMPTY_ARRAY(12, 0, 0, oid)
    return _ARRAY_HEAD(20 + len(body), 1, 0, oid, count, 1) + body


class Fields(dict[Any, bytes]):
    """value → its binary field, made by `encode` on first use. Kept for the values that
    repeat (asset ids, scores): cleared past `limit` entries, so memory stays bounded."""

    def __init__(self, encode: Callable[[Any], bytes], limit: int = 100_000) -> None:
        super().__init__()
        self.encode, self.limit = encode, limit

    def __missing__(self, value: Any) -> bytes:
        if len(self) >= self.limit:
            self.clear()
        found = self[value] = self.encode(value)
        return found


UUIDS = Fields(binary_uuid)
"""Asset ids' fields, shared by the tables that write them."""
NUMERICS = Fields(binary_numeric)
"""Scores' fields by their exact text (a night has a few dozen distinct values)."""


@dataclass(frozen=True)
class Rows:
    """Rows made ready for one bulk write: COPY text lines or binary rows on PostgreSQL,
    parameter tuples elsewhere. Made on the computing thread, so that the writer thread only
    sends them."""

    table: Table
    columns: tuple[str, ...]
    lines: list[str] | None = None
    rows: list[tuple[Any, ...]] | None = None
    binary: list[bytes] | None = None
    text_columns: tuple[str, ...] = ()
    """Columns a staging table holds as text, cast by the upsert (`upsert_lines`)."""


def write_rows(conn: Connection, prepared: Rows) -> None:
    if prepared.binary is not None:
        copy_binary(conn, prepared.table, prepared.columns, prepared.binary)
    elif prepared.lines is not None:
        copy_text(conn, prepared.table, prepared.columns, prepared.lines)
    elif prepared.rows:
        copy_rows(conn, prepared.table, prepared.columns, prepared.rows)


def upsert_prepared(
    conn: Connection,
    prepared: Rows,
    *,
    key: Sequence[str],
    update: Sequence[str],
    newer: str | None = None,
) -> None:
    """`upsert` of rows made ready by `Rows`: COPY lines or binary rows through a staging
    table on PostgreSQL (`upsert_lines`), parameters elsewhere."""
    copied = prepared.binary if prepared.binary is not None else prepared.lines
    if copied is not None:
        upsert_lines(
            conn,
            prepared.table,
            prepared.columns,
            copied,
            key=key,
            update=update,
            newer=newer,
            text_columns=prepared.text_columns,
        )
    elif prepared.rows:
        upsert(
            conn,
            prepared.table,
            [dict(zip(prepared.columns, row, strict=True)) for row in prepared.rows],
            key=key,
            update=update,
            newer=newer,
        )


@contextmanager
def foreign_keys_deferred_to_end(conn: Connection, tables: Sequence[str]) -> Iterator[None]:
    """Drop the foreign keys of `tables` for a bulk load and re-add them at the end.

    PostgreSQL then validates each key once with a set-based join instead of a trigger per
    row (a much faster COPY: docs/PERFORMANCE.md, "Seeding"; the "Populating a Database"
    advice of the PostgreSQL manual).
    Locks the tables for the transaction: for offline bulk loads only. No-op elsewhere.
    """
    if conn.dialect.name != "postgresql":
        yield
        return
    rows = conn.execute(
        text(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint"
            " WHERE contype = 'f' AND conrelid::regclass::text = ANY(:tables)"
        ),
        {"tables": list(tables)},
    ).all()
    for table, name, _ in rows:
        conn.execute(text(f'ALTER TABLE {table} DROP CONSTRAINT "{name}"'))
    yield
    for table, name, definition in rows:
        conn.execute(text(f'ALTER TABLE {table} ADD CONSTRAINT "{name}" {definition}'))
