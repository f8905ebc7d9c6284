"""Set-based writes that work on PostgreSQL and SQLite: upserts and COPY."""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

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
    lines: Sequence[str],
    *,
    key: Sequence[str],
    update: Sequence[str],
    newer: str | None = None,
) -> None:
    """PostgreSQL only: `upsert` of rows already formatted as COPY text `lines` (`copy_text`):
    COPY into a temporary table of `columns` (`_staging_table`), then one `INSERT … SELECT …
    ON CONFLICT` for them all, with `upsert`'s rules (only where a column differs; with
    `newer`, never over a stored row whose value is later). The staged columns are of the
    table's types except JSON, staged as text and cast in the SELECT: a document then enters
    the table once, compressed with the table's own TOAST method."""
    if not lines:
        return
    types = {c: table.c[c].type for c in columns}
    staged_types = {c: Text() if isinstance(t, JSON) else t for c, t in types.items()}
    ddl = ", ".join(f"{c} {staged_types[c].compile(dialect=conn.dialect)}" for c in columns)
    staged = Table(
        _staging_table(conn, table.name, ddl),
        MetaData(),
        *(Column(c, staged_types[c]) for c in columns),
    )
    copy_text(conn, staged, columns, lines)
    source = select(
        *(
            cast(staged.c[c], types[c]) if staged_types[c] is not types[c] else staged.c[c]
            for c in columns
        )
    )
    stmt = postgresql.insert(table).from_select(list(columns), source)
    conn.execute(_on_conflict(stmt, table, key, update, None, newer))


def _staging_table(conn: Connection, name: str, ddl: str) -> str:
    """The name of this session's temporary table of columns `ddl` for staging rows of the
    table `name`, created on the connection's first use: emptied at each commit (ON COMMIT
    DELETE ROWS, in place) rather than created and dropped in every transaction (catalog rows
    written and deleted each time, and autovacuum may be off), and never TOAST-compressed
    (`toast_tuple_target` at its maximum: a staged row is read once, by the upsert, which
    compresses what the table keeps). Its name carries a digest of `ddl`, so another column
    set gets a table of its own. Emptied here too (a DELETE, nothing to do after a commit),
    for a second staging in one transaction; rows a rolled-back transaction left are dead."""
    staged = f"staged_{name}_{zlib.crc32(ddl.encode()):08x}"
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


# COPY's text format: a backslash, tab, newline or carriage return inside a value is escaped.
_COPY_SPECIAL = re.compile(r"[\\\t\n\r]")
_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def copy_escaped(value: str) -> str:
    """`value` as a field of COPY's text format."""
    return value.translate(_COPY_ESCAPES) if _COPY_SPECIAL.search(value) else value


def copy_escaped_json(text: str) -> str:
    """JSON text for COPY: orjson's output has no raw control characters, only backslashes
    (one C-level scan); anything else is escaped in full."""
    if "\t" in text or "\n" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text.replace("\\", "\\\\")


@dataclass(frozen=True)
class Rows:
    """Rows made ready for one bulk write: COPY text lines on PostgreSQL, parameter tuples
    elsewhere. Made on the computing thread, so that the writer thread only sends them."""

    table: Table
    columns: tuple[str, ...]
    lines: list[str] | None = None
    rows: list[tuple[Any, ...]] | None = None


def write_rows(conn: Connection, prepared: Rows) -> None:
    if prepared.lines is not None:
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
    """`upsert` of rows made ready by `Rows`: COPY lines through a staging table on
    PostgreSQL (`upsert_lines`), parameters elsewhere."""
    if prepared.lines is not None:
        upsert_lines(
            conn,
            prepared.table,
            prepared.columns,
            prepared.lines,
            key=key,
            update=update,
            newer=newer,
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
