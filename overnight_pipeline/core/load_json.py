"""The JSON of an `overnight load` file (BEHAVIOUR §10): decoded whole, UTF-8 only. A file
that says two things (a key twice in one object) or holds what no field can (NaN, an
infinite number, half a surrogate pair) is refused by JSON path, every such value listed.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from overnight_pipeline.core.load_errors import (
    FileError,
    LoadFileError,
    Unreadable,
    json_path,
    preview,
    shortened,
    whole_file,
)

# orjson's own limit; the file's real structure is five levels deep.
MAX_DEPTH = 1024

UTF16_32 = (
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\xfe\xff", "UTF-16"),
    (b"\xff\xfe", "UTF-16"),
)


class _Repeated(dict[str, Any]):
    """An object that gave keys more than once: `repeated` holds each one's values in order."""

    repeated: dict[str, list[Any]]


class Reader:
    """`json.loads` hooks that read on past what a load file cannot hold, marking it where it
    is, so that every such value is reported by path rather than the first by line."""

    def __init__(self) -> None:
        self.marked = False

    def on_object(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(pairs)
        if len(found) == len(pairs):
            return found
        self.marked = True
        repeated = _Repeated(found)
        values: dict[str, list[Any]] = {}
        for key, value in pairs:
            values.setdefault(key, []).append(value)
        repeated.repeated = {k: v for k, v in values.items() if len(v) > 1}
        return repeated

    def on_constant(self, name: str) -> Unreadable:
        self.marked = True
        return Unreadable(
            name,
            f"{name} is not a JSON value (JSON numbers are finite; amounts are decimal strings"
            " such as '3.10')",
        )

    def on_float(self, text: str) -> float | Unreadable:
        value = float(text)
        if math.isfinite(value):
            return value  # refused by the schema, by path, as any binary float amount is
        self.marked = True
        return Unreadable(
            text,
            f"the number {shortened(text)} is out of range (it reads as infinity); amounts"
            " are decimal strings such as '3.10'",
        )

    def on_int(self, text: str) -> int | Unreadable:
        try:
            return int(text)
        except ValueError:  # past sys.get_int_max_str_digits() (4,300 by default)
            self.marked = True
            return Unreadable(text, f"the number {shortened(text)} is out of range")


_SURROGATE = re.compile("[\ud800-\udfff]")
# Only a \uXXXX escape can put half a surrogate pair in a decoded string (UTF-8 cannot).
_ESCAPED_SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]")


def lone_surrogate(text: str) -> str | None:
    found = _SURROGATE.search(text)
    if found is None:
        return None
    return (
        f"contains {found.group().encode('unicode-escape').decode()} at position"
        f" {found.start()}, half of a UTF-16 surrogate pair without its other half: not a"
        " character (write the character itself, or both halves of its pair)"
    )


def marked(doc: Any, at: tuple[int | str, ...] = ()) -> list[FileError]:
    """Every repeated key, unreadable number and lone surrogate in `doc` (found at path
    `at` of the file), by JSON path. Iterative: the document can be nested as deep as the
    parser went."""
    errors: list[FileError] = []
    stack: list[tuple[tuple[int | str, ...], Any]] = [(at, doc)]
    while stack:
        loc, value = stack.pop()
        if isinstance(value, dict):
            repeated = value.repeated if isinstance(value, _Repeated) else {}
            children: list[tuple[tuple[int | str, ...], Any]] = []
            for key, last in value.items():
                if key in repeated:
                    shown = ", then ".join(preview(v, 20) for v in repeated[key])
                    errors.append(
                        FileError(
                            json_path("$", (*loc, key)),
                            f"given {len(repeated[key])} times in the same object ({shown});"
                            " a key may appear once",
                        )
                    )
                problem = lone_surrogate(key)
                if problem:
                    errors.append(FileError(json_path("$", (*loc, key)), f"the key {problem}"))
                # Every value of a repeated key is read: what is wrong in each is listed.
                children.extend(((*loc, key), v) for v in repeated.get(key, [last]))
            stack.extend(reversed(children))
        elif isinstance(value, list):
            stack.extend(((*loc, i), value[i]) for i in reversed(range(len(value))))
        elif isinstance(value, Unreadable):
            errors.append(FileError(json_path("$", loc), value.message))
        elif isinstance(value, str):
            problem = lone_surrogate(value)
            if problem:
                errors.append(FileError(json_path("$", loc), problem, value))
    return errors


def decode_load_file(data: bytes) -> Any:
    """The JSON in a load file's bytes: UTF-8 only (a UTF-8 byte-order mark is skipped).
    Another encoding, invalid JSON or nesting past `MAX_DEPTH` raises `LoadFileError` for
    the whole file; a repeated key, NaN, an infinite number or a lone surrogate raises it
    with the path of each."""
    for mark, encoding in UTF16_32:
        if data.startswith(mark):
            raise whole_file(
                f"the file is {encoding} (it starts with a {encoding} byte-order"
                " mark); save it as UTF-8"
            )
    if b"\x00" in data[:4096]:
        # JSON text never holds a raw NUL byte; UTF-16 and UTF-32 text is full of them.
        raise whole_file(
            "the file holds NUL bytes: it looks UTF-16 or UTF-32 encoded; save it as UTF-8"
        )
    data = data.removeprefix(b"\xef\xbb\xbf")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise whole_file(
            f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line} column"
            f" {column} (byte {exc.start}); save the file as UTF-8"
        ) from None
    if not data.strip():
        raise whole_file("the file is empty")
    # The standard parser, not orjson: only its hooks see every key of an object (orjson keeps
    # the last of a repeated key) and let it read on past a value no field can hold.
    reader = Reader()
    try:
        doc = json.loads(
            text,
            object_pairs_hook=reader.on_object,
            parse_constant=reader.on_constant,
            parse_float=reader.on_float,
            parse_int=reader.on_int,
        )
    except json.JSONDecodeError as exc:
        raise whole_file(
            f"not valid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except RecursionError:
        # The standard parser stops near Python's recursion limit (about 1,000 levels, less
        # the caller's stack); orjson at a fixed MAX_DEPTH. A document between the two is
        # orjson's to read: it has no NaN, infinity or lone surrogate then, and it cannot be
        # a load file (five levels deep, every field a scalar), so the schema refuses it by
        # path whatever keys it repeats.
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            where = f"line {exc.lineno} column {exc.colno}"
            if "depth limit" in exc.msg or "recursion" in exc.msg.lower():
                raise whole_file(f"nested deeper than {MAX_DEPTH} levels at {where}") from None
            raise whole_file(f"not valid JSON at {where}: {exc.msg}") from None
    if reader.marked or _ESCAPED_SURROGATE.search(data):
        errors = marked(doc)
        if errors:
            raise LoadFileError(errors)
    return doc
