"""Errors of the `overnight load` file (BEHAVIOUR §10), each named by its JSON path, with
the value found there shown short: what `decode_load_file`, `parse_load_file` and
`LoadStream` raise.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

# Characters of a value shown in an error: a 1 MB string is not echoed back whole.
SHOWN = 60

_NOTHING: Any = object()  # a file-level error has no value to show


def preview(value: Any, limit: int = SHOWN) -> str:
    """`value` as an error shows it: JSON-like, about `limit` characters at most (a long
    string keeps its first `limit` characters and says how long it was)."""
    text = _render(value, limit, depth=0)
    if isinstance(value, str) or len(text) <= limit + 2:
        return text
    return text[:limit] + "…"


def _render(value: Any, limit: int, depth: int) -> str:
    if isinstance(value, str):
        shown = repr(value[:limit])
        return (
            shown
            if len(value) <= limit
            else f"{shown[:-1]}…{shown[-1]} ({len(value):,} characters)"
        )
    if isinstance(value, bool) or value is None:
        return repr(value)
    if isinstance(value, int):
        # str() of a huge int is slow, and refused past 4,300 digits.
        return (
            str(value) if value.bit_length() < 128 else f"an integer of {value.bit_length()} bits"
        )
    if isinstance(value, Decimal | float):
        return str(value)  # exponent form for huge values: never a million digits
    if isinstance(value, Unreadable):
        return shortened(value.text)
    if isinstance(value, Mapping | list):
        if not value:
            return "{}" if isinstance(value, Mapping) else "[]"
        if depth >= 2:
            return (
                f"{{… {len(value)} keys}}"
                if isinstance(value, Mapping)
                else f"[… {len(value)} items]"
            )
        if isinstance(value, Mapping):
            parts = [
                f"{_render(k, 20, depth + 1)}: {_render(v, 20, depth + 1)}"
                for k, v in list(value.items())[:4]
            ]
            more = ", …" if len(value) > 4 else ""
            return "{" + ", ".join(parts) + more + "}"
        parts = [_render(v, 20, depth + 1) for v in value[:4]]
        return "[" + ", ".join(parts) + (", …" if len(value) > 4 else "") + "]"
    return f"<{type(value).__name__}>"


@dataclass(frozen=True)
class FileError:
    path: str
    message: str
    value: Any = _NOTHING

    def __str__(self) -> str:
        message = self.message if len(self.message) <= 300 else self.message[:300] + "…"
        if self.value is _NOTHING:
            return f"{self.path}: {message}"
        return f"{self.path}: {message} (got {preview(self.value)})"


class LoadFileError(ValueError):
    """The file is rejected whole; `errors` holds every problem found."""

    def __init__(self, errors: list[FileError]) -> None:
        self.errors = errors
        super().__init__(
            f"{len(errors)} error(s); nothing was written:\n" + "\n".join(f"  {e}" for e in errors)
        )


def whole_file(message: str) -> LoadFileError:
    return LoadFileError([FileError("$", message)])


@dataclass(frozen=True)
class Unreadable:
    """Where the file holds a number no field can take (NaN, infinite, too long to read)."""

    text: str
    message: str


def shortened(number: str) -> str:
    return number if len(number) <= 32 else f"{number[:30]}… ({len(number):,} characters)"


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")


def json_path(prefix: str, loc: tuple[int | str, ...]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _KEY.fullmatch(part):
            path += f".{part}"
        else:
            path += f"[{preview(part, 30)}]"  # an odd or huge key stays readable and short
    return path
