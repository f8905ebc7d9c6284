"""The garbage collector's thresholds during a shard step, and nowhere else.

A shard step allocates millions of short-lived containers (rows, JSON pieces, Decimals) and
keeps few of them: CPython's default thresholds (700, 10, 10) then run a full collection
every ≈ 70,000 net allocations, each walking every tracked object of the process (Dagster's
and SQLAlchemy's modules included): at 100,000 users, 61 full collections of ≈ 450 ms, 31 %
of the step's Python CPU (issue 25's profile). With a young generation of 50,000 objects and
the objects that exist before the step frozen out of the walk (`gc.freeze`), the step still
collects (the cycles it makes are freed) but far less often and over its own objects only.

`deferred_collection()` scopes that to the `with` block: the thresholds and the frozen set
are restored when it ends, however it ends, so anything else in the process (a test in the
same interpreter, the Dagster machinery around the step) runs with the collector as it was.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

# Young generation, then how many young (middle) collections trigger the next generation.
STEP_THRESHOLDS = (50_000, 20, 20)


@contextmanager
def deferred_collection(thresholds: tuple[int, int, int] = STEP_THRESHOLDS) -> Iterator[None]:
    """Collect less often inside the block; restore the collector's settings after it."""
    before = gc.get_threshold()
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(*thresholds)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if frozen_before == 0:
            # The objects frozen here return to the oldest generation: the next full
            # collection sees them again, as if the block had not run.
            gc.unfreeze()
