"""A load file's JSON read a piece at a time (issue 23) and walked as the standard parser
walks it, one element of the document's arrays at a time: `walk` yields each key of the
document's object and each element of its arrays, decoded by the standard parser with
`Reader`'s hooks (repeated keys, NaN, infinite numbers, lone surrogates). Its messages,
at its positions, are those of `decode_load_file`, which reads the file whole.

The standard parser's C scanner (`json`), not a streaming library: ijson's backends stop at
NaN or Infinity with a lexical error of the whole file and keep the last of a repeated key,
where the load file must name the path of each.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import orjson

from overnight_pipeline.core.load_errors import whole_file
from overnight_pipeline.core.load_json import MAX_DEPTH, UTF16_32, Reader

PIECE = 1 << 20
"""Bytes read at a time; a value longer than what is held is read on in growing pieces."""

# The standard parser's own string scanner (C), with its messages (typeshed omits it).
_scanstring: Callable[[str, int, bool], tuple[str, int]] = json.decoder.scanstring  # type: ignore[attr-defined]

_WHITESPACE = re.compile(r"[ \t\n\r]*")
# What `bytes.strip()` removes: a file of only these is empty (`decode_load_file`).
_BLANK = re.compile(r"[ \t\n\r\x0b\x0c]*")
# Only a \uXXXX escape can put half a surrogate pair in a decoded string (UTF-8 cannot).
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")
# An error this close to the end of what was read may be the end of the piece, not the file's.
_NEAR_END = 16


class Stop(Exception):
    """The file cannot be read as JSON past this point (a syntax error, too deep)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class Text:
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

    def stop(self, at: int, message: str) -> Stop:
        return Stop(f"not valid JSON at {self.where(at)}: {message}")

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
                raise Stop(f"nested deeper than {MAX_DEPTH} levels at {self.where(at)}") from None
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
class Key:
    """A key of the document (None: the document is not an object) and whether its value
    is an array, whose elements follow as `Item`s, or one value, a single `Item`."""

    key: str | None
    array: bool


@dataclass(frozen=True)
class Item:
    key: str | None
    index: int | None  # in the key's array; None for a value that is not an array
    value: Any
    suspect: bool  # may hold a repeated key, an unreadable number or a lone surrogate


def walk(text: Text) -> Iterator[Key | Item]:
    """The document as the standard parser reads it, one array element at a time."""
    text.begin()
    first = text.peek()
    if first == "{":
        yield from _object(text)
    elif first == "[":
        yield Key(None, array=True)
        yield from _array(text, None, depth=1)
    else:
        yield Key(None, array=False)
        yield Item(None, None, *text.value(depth=0))
    text.skip_whitespace()
    if text.peek():
        raise text.stop(text.pos, "Extra data")


def _object(text: Text) -> Iterator[Key | Item]:
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
            yield Key(key, array=True)
            yield from _array(text, key, depth=2)
        else:
            yield Key(key, array=False)
            yield Item(key, None, *text.value(depth=1))
        if _closed(text, "}"):
            return


def _array(text: Text, key: str | None, depth: int) -> Iterator[Item]:
    """An array of the document, element by element (`json.decoder.JSONArray`)."""
    text.pos += 1
    text.skip_whitespace()
    if text.peek() == "]":
        text.pos += 1
        return
    index = 0
    while True:
        yield Item(key, index, *text.value(depth))
        index += 1
        if _closed(text, "]"):
            return


def _closed(text: Text, close: str) -> bool:
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
