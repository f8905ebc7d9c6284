"""The repository's rooms stay the size a reader can hold (issue 24): no product module over
500 lines, no function over 100 (the Alembic migrations aside), and SQL only in storage —
what import-linter cannot see, since `from sqlalchemy import select` and `from sqlalchemy
import Engine` import the same package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRODUCT = [
    path
    for package in ("overnight_pipeline", "dashboard_api")
    for path in sorted((REPO / package).rglob("*.py"))
    if "migrations" not in path.parts
]
# What a module outside storage may take from SQLAlchemy: types to pass an engine or a
# connection along, URL handling, and the errors to catch. No statement builders.
OUTSIDE_STORAGE = {"Connection", "Engine", "make_url", "URL"}


def _name(path: Path) -> str:
    return str(path.relative_to(REPO))


def test_the_product_modules_are_found() -> None:
    assert len(PRODUCT) > 100
    assert REPO / "overnight_pipeline" / "definitions.py" in PRODUCT


@pytest.mark.parametrize("path", PRODUCT, ids=_name)
def test_no_module_over_500_lines_nor_a_function_over_100(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= 500, f"{_name(path)}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            assert length <= 100, f"{_name(path)}:{node.lineno} {node.name}: {length} lines"


@pytest.mark.parametrize("path", [p for p in PRODUCT if "storage" not in p.parts], ids=_name)
def test_no_sql_outside_storage(path: Path) -> None:
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
            if node.module == "sqlalchemy.exc":
                continue
            taken = {alias.name for alias in node.names} - OUTSIDE_STORAGE
            assert not taken, (
                f"{_name(path)}:{node.lineno} imports {sorted(taken)} from {node.module}"
            )
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            assert node.func.attr not in ("exec_driver_sql", "execute"), (
                f"{_name(path)}:{node.lineno} runs a statement outside storage"
            )
