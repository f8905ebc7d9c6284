"""A load file of any size, read a piece at a time (issue 23): checked whole in a first
pass, then given back a user at a time in a second, in memory that does not grow with
the file.

Same rules and messages as `decode_load_file` then `parse_load_file`, which read the file
whole: the document is walked by `load_walk.walk` as the standard parser walks it, each
element of an array validated by `check_asset` and `check_user`. Between the passes only
what relates users to each other and to the assets is kept: the ids seen, the file's asset
keys and the keys its holdings name. The second pass reads the file again and refuses it if
its bytes changed.
"""

from __future__ import annotations

import io
import os
import stat
import uuid
from array import array
from collections.abc import Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np

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
from overnight_pipeline.core.load_json import lone_surrogate, marked
from overnight_pipeline.core.load_walk import PIECE, Item, Key, Stop, Text, walk

PROGRESS_EVERY = 1000
"""Users between two calls of `check`'s `progress`."""


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
            text = Text(raw, self.piece)
            try:
                for event in walk(text):
                    if checker.see(event) and progress:
                        progress(checker.users_read, text.bytes_read)
            except Stop as stop:
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
            text = Text(raw, self.piece)
            try:
                for event in walk(text):
                    if not isinstance(event, Item) or event.index is None:
                        continue
                    if event.key == "assets" and assets:
                        yield AssetIn.model_validate(event.value)
                    elif event.key == "users" and users:
                        yield UserIn.model_validate(event.value)
            except (Stop, ValueError):  # LoadFileError and pydantic's errors included
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

    def see(self, event: Key | Item) -> bool:
        """Take in `event`; True every `PROGRESS_EVERY` users."""
        if isinstance(event, Key):
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
