"""Consecutive pieces of a list or a stream: the pipeline's batches of users, and the
statements and round trips that each take a bounded number of rows."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from itertools import islice
from typing import TypeVar

T = TypeVar("T")


def chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """`items` in consecutive lists of `size` (the last may be shorter), read as they are
    needed: a stream is never held whole."""
    if size < 1:
        raise ValueError(f"size must be a positive integer, got {size!r}")
    it = iter(items)
    while piece := list(islice(it, size)):
        yield piece
