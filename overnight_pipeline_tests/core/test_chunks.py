from __future__ import annotations

import pytest

from overnight_pipeline.core.chunks import chunks


def test_chunks_are_consecutive_and_the_last_may_be_shorter() -> None:
    assert list(chunks([1, 2, 3, 4, 5], 2)) == [[1, 2], [3, 4], [5]]
    assert list(chunks(range(4), 4)) == [[0, 1, 2, 3]]
    assert list(chunks([], 3)) == []


def test_a_stream_is_read_one_chunk_at_a_time() -> None:
    read: list[int] = []

    def stream():
        for i in range(10):
            read.append(i)
            yield i

    first = next(chunks(stream(), 3))
    assert first == [0, 1, 2]
    assert read == [0, 1, 2]


@pytest.mark.parametrize("size", [0, -1])
def test_a_size_below_one_is_refused(size: int) -> None:
    with pytest.raises(ValueError, match="size must be a positive integer"):
        list(chunks([1], size))
