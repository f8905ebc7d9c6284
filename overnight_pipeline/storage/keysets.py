"""Statements over a set of keys whose plan does not grow with the set.

A row-value `IN` list of n keys is one expression of n comparisons. PostgreSQL costs a scan
filtered by it at rows × n, and above `jit_above_cost` JIT-compiles the expression with LLVM
in a time that grows about quadratically with n and cannot be cancelled (issue 23: a load
removing 8,895 holdings ran for more than 8 minutes; docs/PERFORMANCE.md, "Loads that remove
many holdings"). On PostgreSQL the keys travel instead as one array per column, and `unnest`
turns the arrays into a relation the planner joins: one statement, whose text and plan shape
are the same for 10 keys or 100,000. SQLite has neither arrays nor JIT and plans a row-value
`IN (VALUES …)` well: there the keys go in chunks that stay under its parameter limit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import ColumnElement, Connection, and_, bindparam, func, tuple_
from sqlalchemy.dialects.postgresql import ARRAY

# SQLite: 2 columns × 5,000 keys stay under its 32,766 bound parameters.
SQLITE_CHUNK = 5000


def keys_in(
    conn: Connection,
    columns: Sequence[ColumnElement[Any]],
    keys: Sequence[Sequence[Any]],
    *,
    chunk: int = SQLITE_CHUNK,
) -> Iterator[ColumnElement[bool]]:
    """WHERE criteria selecting the rows whose `columns` equal one of `keys` (tuples in
    the order of `columns`): one criterion on PostgreSQL, one per `chunk` keys on SQLite.
    Nothing for no keys. Use each in a statement of its own."""
    # A key given twice would be a row joined twice.
    keys = list(dict.fromkeys(tuple(key) for key in keys))
    if not keys:
        return
    if conn.dialect.name != "postgresql":
        for start in range(0, len(keys), chunk):
            part = keys[start : start + chunk]
            if len(columns) == 1:
                yield columns[0].in_([key[0] for key in part])
            else:
                yield tuple_(*columns).in_(part)
        return
    names = [f"k{i}" for i in range(len(columns))]
    arrays = [
        bindparam(None, [key[i] for key in keys], type_=ARRAY(column.type))
        for i, column in enumerate(columns)
    ]
    given = func.unnest(*arrays).table_valued(*names).render_derived()
    criteria = [column == given.c[name] for column, name in zip(columns, names, strict=True)]
    yield and_(*criteria)
