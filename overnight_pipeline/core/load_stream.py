"""A load file of any size, read a piece at a time (issue 23): checked whole in a first
pass, then given back a user at a time in a second, in memory that does not grow with
the file.

Same rules and messages as `decode_load_file` then `parse_load_file`, which read the file
whole: the document's object and its arrays are walked here as the standard parser walks
them (its messages at its positions), each element of an array is decoded by the standard
parser with `Reader`'s hooks (repeated keys, NaN, infinite numbers, lone surrogates) and
validated by `check_asset` and `check_user`. Between the passes only what relates users to
each other and to the assets is kept: the ids seen, the file's asset keys and the keys its
holdings name. The second pass reads the file again and refuses it if its bytes changed.

The standard parser's C scanner (`json`), not a streaming library: ijson's backends stop at
NaN or Infinity with a lexical error of the whole file and keep the last of a repeated key,
where the load file must name the path of each.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import stat
import uuid
from array import array
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import orjson

from overnight_pipeline.core.load_errors import (
    FileError,
    LoadFileError,
    json_path,
    preview,
    whole_file,
)
from overnight_pipeline.core.load_fields import AssetIn, UserIn
from overnight_pipeline.core.load_file import (
    check_asset,
    check_asset_unique,
    check_user,
    duplicate_user,
)
from overnight_pipeline.core.load_json import (
    MAX_DEPTH,
    UTF16_32,
    Reader,
    lone_surrogate,
    marked,
)

PIECE = 1 << 20
"""Bytes read at a time; a value longer than what is held is read on in growing pieces."""
PROGRESS_EVERY = 1000
"""Users between two calls of `check`'s `progress`."""

# The standard parser's own string scanner (C), with its messages (typeshed omits it).
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# What `bytes.strip()` removes: a file of only these is empty (`decode_load_file`).
_BLANK = re.compile(r"[ \t\n\r\x0b\x0c]*")
# Only a \uXXXX escape can put half a surrogate pair in a decoded string (UTF-8 cannot).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# An error this close to the end of what was read may be the end of the piece, not the file's.
_NEAR_END = 16


class _Stop(Exception):
    """The file cannot be read as JSON past this point (a syntax error, too deep)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _Text:
    """The file's text, decoded as UTF-8 a piece at a time. `buf` holds the characters from
    file offset `_base` on; what lies before `pos` is dropped at the next read."""

    def __init__(self, raw: IO[bytes], piece: int = PIECE) -> None:
        self._raw = raw
        self._piece = piece
        self.digest = hashlib.blake2b(digest_size=20)
        self.bytes_read = 0
        self.buf = ""
        self.pos = 0
        self.eof = False
        self._base = 0  # file character offset of buf[0]
        self._lines = 0  # newlines before buf[0]
        self._line_start = 0  # file character offset of the line holding buf[0]
        self._pending = b""  # the start of a UTF-8 sequence that the next piece completes
        self._decoded = 0  # bytes decoded (after a byte-order mark): a UTF-8 error's offset
        self._byte_lines = 0
        self._byte_line_start = 0
        self.reader = Reader()
        self.decoder = json.JSONDecoder(
            object_pairs_hook=self.reader.on_object,
            parse_constant=self.reader.on_constant,
            parse_float=self.reader.on_float,
            parse_int=self.reader.on_int,
        )
        self._first()

    def _read(self, size: int) -> bytes:
        data = self._raw.read(size)
        self.bytes_read += len(data)
        self.digest.update(data)
        return data

    def _first(self) -> None:
        """The checks `decode_load_file` makes on the first bytes."""
        head, ended = b"", False
        while len(head) < 4096 and not ended:
            data = self._read(4096 - len(head))
            head += data
            ended = not data
        for mark, encoding in UTF16_32:
            if head.startswith(mark):
                raise whole_file(
                    f"the file is {encoding} (it starts with a {encoding} byte-order"
                    " mark); save it as UTF-8"
                )
        if b"\x00" in head:
            raise whole_file(
                "the file holds NUL bytes: it looks UTF-16 or UTF-32 encoded; save it as UTF-8"
            )
        self._decode(head.removeprefix(b"\xef\xbb\xbf"), final=ended)

    def _decode(self, data: bytes, *, final: bool, keep: bool = True) -> int:
        """Decode `data` after what is pending; the characters added to `buf`."""
        data = self._pending + data
        cut = len(data) if final else _complete(data)
        data, self._pending = data[:cut], data[cut:]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            at = self._decoded + exc.start
            line = self._byte_lines + data.count(b"\n", 0, exc.start) + 1
            last = data.rfind(b"\n", 0, exc.start)
            column = exc.start - last if last >= 0 else at - self._byte_line_start + 1
            raise whole_file(
                f"not UTF-8: byte 0x{data[exc.start]:02x} at line {line} column"
                f" {column} (byte {at}); save the file as UTF-8"
            ) from None
        newlines = data.count(b"\n")
        if newlines:
            self._byte_lines += newlines
            self._byte_line_start = self._decoded + data.rfind(b"\n") + 1
        self._decoded += len(data)
        self.eof = final
        if keep:
            self.buf += text
        return len(text)

    def more(self) -> bool:
        """Read on (dropping what was consumed); False when the file has no more text."""
        while not self.eof:
            if self.pos:
                consumed = self.buf.count("\n", 0, self.pos)
                if consumed:
                    self._lines += consumed
                    self._line_start = self._base + self.buf.rfind("\n", 0, self.pos) + 1
                self._base += self.pos
                self.buf = self.buf[self.pos :]
                self.pos = 0
            # A value longer than a piece: read as much again, so that parsing it anew
            # after each read costs linear time in its length.
            data = self._read(max(self._piece, len(self.buf)))
            if self._decode(data, final=not data):
                return True
        return False

    def drain(self) -> None:
        """Read to the end, decoding only: a UTF-8 error anywhere is reported before a JSON
        error, as when the file is decoded whole."""
        self.buf, self.pos = "", 0
        while not self.eof:
            data = self._read(self._piece)
            self._decode(data, final=not data, keep=False)

    def where(self, at: int) -> str:
        """`line L column C` of `buf[at]`, counted as the standard parser counts them."""
        line = self._lines + self.buf.count("\n", 0, at) + 1
        last = self.buf.rfind("\n", 0, at)
        column = at - last if last >= 0 else self._base + at - self._line_start + 1
        return f"line {line} column {column}"

    def stop(self, at: int, message: str) -> _Stop:
        return _Stop(f"not valid JSON at {self.where(at)}: {message}")

    def peek(self) -> str:
        """The next character, '' at the end of the file."""
        while self.pos >= len(self.buf) and self.more():
            pass
        return self.buf[self.pos : self.pos + 1]

    def skip_whitespace(self) -> None:
        while True:
            self.pos = _WHITESPACE.match(self.buf, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.buf) or not self.more():
                return

    def begin(self) -> None:
        """Up to the document's first character: `decode_load_file`'s empty file, and the
        standard parser's byte-order mark."""
        ahead = 0
        while True:
            ahead = _BLANK.match(self.buf, ahead).end()  # type: ignore[union-attr]
            if ahead < len(self.buf):
                break
            if not self.more():
                raise whole_file("the file is empty")
        if self.buf.startswith("\ufeff"):
            raise self.stop(0, "Unexpected UTF-8 BOM (decode using utf-8-sig)")
        self.skip_whitespace()

    def _truncated(self, exc: json.JSONDecodeError) -> bool:
        """Whether `exc` may come from the end of the piece rather than the file's text."""
        return not self.eof and (
            exc.pos >= len(self.buf) - _NEAR_END or exc.msg.startswith("Unterminated string")
        )

    def string(self) -> str:
        """The string starting at `pos` (a key of the document)."""
        while True:
            try:
                key, end = _scanstring(self.buf, self.pos + 1, True)
            except json.JSONDecodeError as exc:
                if self._truncated(exc):
                    self.more()
                    continue
                raise self.stop(exc.pos, exc.msg) from None
            self.pos = end
            return key

    def value(self, depth: int) -> tuple[Any, bool]:
        """The value at `pos`, `depth` levels into the document, and whether it may hold
        something `marked` reports."""
        while True:
            self.reader.marked = False
            try:
                value, end = self.decoder.raw_decode(self.buf, self.pos)
            except json.JSONDecodeError as exc:
                if self._truncated(exc):
                    self.more()
                    continue
                raise self.stop(exc.pos, exc.msg) from None
            except RecursionError:
                return self._deep(depth), False
            if end >= len(self.buf) and self.more():
                continue  # a number may go on in the next piece
            suspect = self.reader.marked or bool(_ESCAPED_SURROGATE.search(self.buf, self.pos, end))
            self.pos = end
            return value, suspect

    def _deep(self, depth: int) -> Any:
        """A value nested past the standard parser's recursion limit: orjson's reading, as
        in `decode_load_file`, with the document's `depth` levels above it counted."""
        while True:
            rest = self.buf[self.pos :]
            try:
                orjson.loads(rest)
            except orjson.JSONDecodeError as exc:
                if exc.msg.startswith("unexpected content after document"):
                    end = self.pos + exc.pos
                    break
                if _too_deep(exc):
                    end = len(self.buf)  # reported below, where the document is too deep
                    break
                if not self.eof and exc.pos >= len(rest) - _NEAR_END:
                    self.more()
                    continue
                raise self.stop(self.pos + exc.pos, exc.msg) from None
            if not self.more():  # else a number may go on in the next piece
                end = len(self.buf)
                break
        try:
            value = orjson.loads("[" * depth + self.buf[self.pos : end] + "]" * depth)
        except orjson.JSONDecodeError as exc:
            at = self.pos + exc.pos - depth
            if _too_deep(exc):
                raise _Stop(f"nested deeper than {MAX_DEPTH} levels at {self.where(at)}") from None
            raise self.stop(at, exc.msg) from None
        for _ in range(depth):
            value = value[0]
        self.pos = end
        return value


def _too_deep(exc: orjson.JSONDecodeError) -> bool:
    return "depth limit" in exc.msg or "recursion" in exc.msg.lower()


def _complete(data: bytes) -> int:
    """Where `data` ends with whole UTF-8 sequences: a sequence the next piece completes
    is kept for it (an invalid byte is left in place, for the decoder to report)."""
    for back in range(1, min(4, len(data)) + 1):
        byte = data[-back]
        if byte < 0x80:
            return len(data)
        if byte >= 0xC0:
            needed = 2 if byte < 0xE0 else 3 if byte < 0xF0 else 4
            return len(data) - back if needed > back else len(data)
    return len(data)


@dataclass(frozen=True)
class _Key:
    """A key of the document (None: the document is not an object) and whether its value
    is an array, whose elements follow as `_Item`s, or one value, a single `_Item`."""

    key: str | None
    array: bool


@dataclass(frozen=True)
class _Item:
    key: str | None
    index: int | None  # in the key's array; None for a value that is not an array
    value: Any
    suspect: bool  # may hold a repeated key, an unreadable number or a lone surrogate


def _walk(text: _Text) -> Iterator[_Key | _Item]:
    """The document as the standard parser reads it, one array element at a time."""
    text.begin()
    first = text.peek()
    if first == "{":
        yield from _object(text)
    elif first == "[":
        yield _Key(None, array=True)
        yield from _array(text, None, depth=1)
    else:
        yield _Key(None, array=False)
        yield _Item(None, None, *text.value(depth=0))
    text.skip_whitespace()
    if text.peek():
        raise text.stop(text.pos, "Extra data")


def _object(text: _Text) -> Iterator[_Key | _Item]:
    """The document's object (`json.decoder.JSONObject`'s steps and messages)."""
    text.pos += 1
    text.skip_whitespace()
    if text.peek() == "}":
        text.pos += 1
        return
    while True:
        if text.peek() != '"':
            raise text.stop(text.pos, "Expecting property name enclosed in double quotes")
        key = text.string()
        text.skip_whitespace()
        if text.peek() != ":":
            raise text.stop(text.pos, "Expecting ':' delimiter")
        text.pos += 1
        text.skip_whitespace()
        if text.peek() == "[":
            yield _Key(key, array=True)
            yield from _array(text, key, depth=2)
        else:
            yield _Key(key, array=False)
            yield _Item(key, None, *text.value(depth=1))
        if _closed(text, "}"):
            return


def _array(text: _Text, key: str | None, depth: int) -> Iterator[_Item]:
    """An array of the document, element by element (`json.decoder.JSONArray`)."""
    text.pos += 1
    text.skip_whitespace()
    if text.peek() == "]":
        text.pos += 1
        return
    index = 0
    while True:
        yield _Item(key, index, *text.value(depth))
        index += 1
        if _closed(text, "]"):
            return


def _closed(text: _Text, close: str) -> bool:
    """After a member or an element: True at `close` (passed), False at a ',' (passed, and
    the whitespace after it); anything else is the standard parser's error."""
    text.skip_whitespace()
    after = text.peek()
    text.pos += 1
    if after == close:
        return True
    if after != ",":
        raise text.stop(text.pos - 1, "Expecting ',' delimiter")
    text.skip_whitespace()
    return False


class _Head(list[Any]):
    """The first elements of an array read one at a time, and its length: enough to show
    it in an error as `preview` shows a list."""

    def __init__(self) -> None:
        super().__init__()
        self.length = 0

    def add(self, item: Any) -> None:
        self.length += 1
        if super().__len__() < 5:
            self.append(item)

    def __len__(self) -> int:
        return self.length


Progress = Callable[[int, int], None]
"""Called with the users read so far and the bytes."""


class LoadStream:
    """The load file at `path` (or `data`, named `path`): `check` it (pass 1), then read its
    assets and users from `items` (pass 2, as often as needed), `piece` bytes at a time.
    Raises `OSError` if the file cannot be opened."""

    def __init__(self, path: Path, *, data: bytes | None = None, piece: int = PIECE) -> None:
        self.path = path
        self.piece = piece
        self._data = data
        if data is None:
            with path.open("rb") as raw:
                found = os.fstat(raw.fileno())
                if not stat.S_ISREG(found.st_mode):
                    # A pipe cannot be read twice: held whole, as every file was before.
                    self._data = raw.read()
        self.size = len(self._data) if self._data is not None else found.st_size
        """Bytes in the file (when it was opened)."""
        self.users = 0
        self.assets = 0
        self.asset_keys: set[tuple[str, str]] = set()
        self.held: set[tuple[str, str]] = set()
        self.assets_first = True
        self._digest: bytes | None = None

    def _open(self) -> IO[bytes]:
        return io.BytesIO(self._data) if self._data is not None else self.path.open("rb")

    def check(self, *, markets: Collection[str], progress: Progress | None = None) -> None:
        """Pass 1: every rule of `decode_load_file` and `parse_load_file`, their errors in
        their order; raises `LoadFileError` listing them. Keeps only what pass 2 needs."""
        checker = _Checker(markets)
        with self._open() as raw:
            text = _Text(raw, self.piece)
            try:
                for event in _walk(text):
                    if checker.see(event) and progress:
                        progress(checker.users_read, text.bytes_read)
            except _Stop as stop:
                text.drain()  # a UTF-8 error comes first, as when the file is read whole
                raise whole_file(stop.message) from None
        checker.finish()
        keys = checker.keys
        self.users, self.assets = checker.users_read, checker.assets_read
        self.asset_keys, self.held = set(checker.seen_assets), checker.held
        self.assets_first = (
            "assets" not in keys
            or "users" not in keys
            or keys.index("assets") < keys.index("users")
        )
        self._digest = text.digest.digest()

    def items(self, *, assets: bool = True, users: bool = True) -> Iterator[AssetIn | UserIn]:
        """Pass 2, after `check`: the file's assets and users as they come in it, one at a
        time. Raises `LoadFileError` if the file changed since it was checked (its bytes
        are compared once all are read: until then what was given may be of the new one)."""
        assert self._digest is not None, "check() first"
        with self._open() as raw:
            text = _Text(raw, self.piece)
            try:
                for event in _walk(text):
                    if not isinstance(event, _Item) or event.index is None:
                        continue
                    if event.key == "assets" and assets:
                        yield AssetIn.model_validate(event.value)
                    elif event.key == "users" and users:
                        yield UserIn.model_validate(event.value)
            except (_Stop, ValueError):  # LoadFileError and pydantic's errors included
                raise _changed(self.path) from None
            if text.digest.digest() != self._digest:
                raise _changed(self.path)


def _changed(path: Path) -> LoadFileError:
    return LoadFileError(
        [FileError("$", f"{path} changed while it was loaded; load it again once it is written")]
    )


class _Ids:
    """The users' ids, 20 bytes each (a dict of UUIDs costs many times that per user:
    docs/PERFORMANCE.md, "Figures once quoted in the code"): repeated ones are found once
    all are read."""

    def __init__(self) -> None:
        self._ids = bytearray()
        self._at = array("I")  # each id's user index

    def add(self, index: int, user_id: uuid.UUID) -> None:
        self._ids += user_id.bytes
        self._at.append(index)

    def repeated(self) -> list[tuple[int, int, uuid.UUID]]:
        """(index, index of the first user with the id, id) of every repeat."""
        if not self._at:
            return []
        halves = np.frombuffer(self._ids, dtype=">u8").reshape(-1, 2)
        order = np.lexsort((np.arange(len(self._at)), halves[:, 1], halves[:, 0]))
        ordered = halves[order]
        same = (ordered[1:] == ordered[:-1]).all(axis=1)
        if not same.any():
            return []
        # For each id in sorted order, where its run of equal ids starts.
        starts = np.maximum.accumulate(np.where(np.r_[True, ~same], np.arange(len(order)), 0))
        at = np.frombuffer(self._at, dtype=np.uint32)
        return [
            (int(at[order[k]]), int(at[order[starts[k]]]), uuid.UUID(bytes=bytes(ordered[k])))
            for k in np.flatnonzero(same) + 1
        ]


class _Checker:
    """Pass 1's findings: `decode_load_file`'s (repeated keys, unreadable numbers, lone
    surrogates) win over `parse_load_file`'s, each listed in its order."""

    def __init__(self, markets: Collection[str]) -> None:
        self.markets = markets
        self.keys: list[str | None] = []  # the document's keys as they come, repeats included
        self.shown: list[Any] = []  # each key's value, or its array's `_Head`
        self.arrays: list[bool] = []
        self.marks: dict[str | None, list[FileError]] = {}
        self.marked = False
        self.asset_errors: list[FileError] = []
        self.duplicates: list[FileError] = []
        self.user_errors: list[tuple[int, FileError]] = []  # by the user's index
        self.seen_assets: dict[tuple[str, str], int] = {}
        self.ids = _Ids()
        self.held: set[tuple[str, str]] = set()
        self.users_read = 0
        self.assets_read = 0

    def see(self, event: _Key | _Item) -> bool:
        """Take in `event`; True every `PROGRESS_EVERY` users."""
        if isinstance(event, _Key):
            self.keys.append(event.key)
            self.arrays.append(event.array)
            self.shown.append(_Head() if event.array else None)
            return False
        if event.index is None:
            self.shown[-1] = event.value
        else:
            self.shown[-1].add(event.value)
        if event.suspect:
            at: tuple[int | str, ...] = () if event.key is None else (event.key,)
            found = marked(event.value, at if event.index is None else (*at, event.index))
            if found:
                self.marked = True
                self.marks.setdefault(event.key, []).extend(found)
        if event.index is None or self.marked:
            # Once the file is refused for what it says (`decode_load_file`), the schema's
            # errors are not listed.
            return False
        if event.key == "assets":
            self.assets_read += 1
            asset = check_asset(event.index, event.value, self.markets, self.asset_errors)
            if asset is not None:
                self.duplicates.extend(check_asset_unique(event.index, asset, self.seen_assets))
        elif event.key == "users":
            self.users_read += 1
            errors: list[FileError] = []
            user = check_user(event.index, event.value, self.markets, None, errors)
            self.user_errors.extend((event.index, e) for e in errors)
            if user is not None:
                self.ids.add(event.index, user.id)
                self.held.update((h.market, h.symbol) for h in user.holdings)
            return self.users_read % PROGRESS_EVERY == 0
        return False

    def finish(self) -> None:
        """Raise `LoadFileError` with what was found, as the whole-file functions list it."""
        if self.keys == [None]:
            self._finish_not_an_object()
            return
        order = list(dict.fromkeys(self.keys))
        marks: list[FileError] = []
        for key in order:
            assert key is not None
            values = [v for k, v in zip(self.keys, self.shown, strict=True) if k == key]
            if len(values) > 1:
                shown = ", then ".join(preview(v, 20) for v in values)
                marks.append(
                    FileError(
                        json_path("$", (key,)),
                        f"given {len(values)} times in the same object ({shown});"
                        " a key may appear once",
                    )
                )
            problem = lone_surrogate(key)
            if problem:
                marks.append(FileError(json_path("$", (key,)), f"the key {problem}"))
        for key in order:
            marks.extend(self.marks.get(key, []))
        if marks:
            raise LoadFileError(marks)
        value = {k: v for k, v in zip(self.keys, self.shown, strict=True) if k is not None}
        array = dict(zip(self.keys, self.arrays, strict=True))
        errors = [
            FileError(json_path("$", (key,)), "unknown field", value[key])
            for key in sorted(set(value) - {"assets", "users"}, key=str)
        ]
        # A repeated id is its user's first error (`check_user`): sorted in by index.
        repeats = [(i, 0, duplicate_user(i, first, u)) for i, first, u in self.ids.repeated()]
        tagged = sorted(repeats + [(i, 1, e) for i, e in self.user_errors], key=lambda t: t[:2])
        users = [e for _, _, e in tagged]
        for key, found in (("assets", self.asset_errors + self.duplicates), ("users", users)):
            if key in value and not array[key]:
                errors.append(FileError(f"$.{key}", "must be a list", value[key]))
            else:
                errors.extend(found)
        if errors:
            raise LoadFileError(errors)

    def _finish_not_an_object(self) -> None:
        marks = self.marks.get(None, [])
        if marks:
            raise LoadFileError(marks)
        raise LoadFileError(
            [FileError("$", "must be an object with 'assets' and 'users'", self.shown[0])]
        )
