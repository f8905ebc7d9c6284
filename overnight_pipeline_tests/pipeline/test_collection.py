"""The garbage collector's thresholds are the shard step's own (issue 25): its batches run
with deferred collection, and whatever runs after it in the process (another test, the
Dagster machinery) finds the collector exactly as it was, however the step ended."""

from __future__ import annotations

import gc
import uuid
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import Engine

from overnight_pipeline.steps import batch_results, calculation
from overnight_pipeline.steps.collection import STEP_THRESHOLDS, deferred_collection
from overnight_pipeline_tests.support.priced import KW, priced_nyse_engine


class _Node:
    def __init__(self) -> None:
        self.me = self  # a cycle: only the collector frees it


def test_the_block_defers_collection_and_restores_the_collector() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with deferred_collection():
        assert gc.get_threshold() == STEP_THRESHOLDS
        cycle = _Node()
        alive = weakref.ref(cycle)
        del cycle
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen
    # A cycle made inside the block is still garbage the collector frees.
    gc.collect()
    assert alive() is None


def test_the_collector_is_restored_when_the_block_fails() -> None:
    before = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with pytest.raises(RuntimeError, match="boom"), deferred_collection():
        raise RuntimeError("boom")
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == frozen


def test_objects_from_before_the_block_are_collectable_after_it() -> None:
    cycle = _Node()
    alive = weakref.ref(cycle)
    with deferred_collection():
        pass
    del cycle
    gc.collect()
    assert alive() is None


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    yield from priced_nyse_engine("overnight_collection", users=12, seed_value=5)


def test_the_shard_step_computes_its_batches_with_deferred_collection(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[int, int, int]] = []
    process = batch_results.process_batch

    def observed(*args: Any, **kwargs: Any) -> Any:
        seen.append(gc.get_threshold())
        return process(*args, **kwargs)

    monkeypatch.setattr("overnight_pipeline.steps.calculation.process_batch", observed)
    before = gc.get_threshold()
    report = calculation.score_and_recommend(
        engine,
        correlation_id=uuid.uuid4(),
        calculated_at=datetime.now(UTC),
        run_id="gc",
        batch_size=5,
        **KW,
    )
    users = report.users_total
    assert report.users_succeeded == users > 5
    assert seen == [STEP_THRESHOLDS] * -(-users // 5)
    assert gc.get_threshold() == before
