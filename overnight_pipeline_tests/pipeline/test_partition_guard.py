"""A run builds exactly the partitions it was asked for (BEHAVIOUR §9): when its partition tags
disagree (tags copied from another partition, partition tags typed at a backfill's launch),
every step refuses it before any write, naming both sides."""

from __future__ import annotations

import pytest
from dagster import DagsterEventType
from sqlalchemy import func, select

from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import PartitionMismatch, check_run_partitions
from overnight_pipeline.storage.models import calculation_events_table, exchange_rates_table
from overnight_pipeline_tests.pipeline.conftest import Pipeline

ONE = {
    "dagster/partition": "2026-11-16|B3",
    "dagster/partition/date": "2026-11-16",
    "dagster/partition/market": "B3",
}


def test_consistent_tags_give_the_steps_keys() -> None:
    assert check_run_partitions(ONE, ["2026-11-16|B3"]) == ["2026-11-16|B3"]
    ranged = {
        "dagster/asset_partition_range_start": "2026-11-16|B3",
        "dagster/asset_partition_range_end": "2026-11-18|B3",
    }
    keys = ["2026-11-16|B3", "2026-11-17|B3", "2026-11-18|B3"]
    assert check_run_partitions(ranged, keys) == keys


@pytest.mark.parametrize(
    ("tags", "keys", "named"),
    [
        # A job backfill under a single-run policy: the first partition's dimension tags
        # beside each run's own range (Dagster then builds the first partition every time).
        (
            {
                "dagster/partition/date": "2026-11-16",
                "dagster/partition/market": "B3",
                "dagster/asset_partition_range_start": "2026-11-17|TSE",
                "dagster/asset_partition_range_end": "2026-11-17|TSE",
            },
            ["2026-11-16|B3"],
            "2026-11-17|TSE",
        ),
        ({**ONE, "dagster/partition/market": "TSE"}, ["2026-11-16|TSE"], "2026-11-16|B3"),
        (
            {
                "dagster/asset_partition_range_start": "2026-11-16|B3",
                "dagster/asset_partition_range_end": "2026-11-17|TSE",
            },
            [],
            "one market",
        ),
        ({"dagster/asset_partition_range_start": "2026-11-16|B3"}, [], "needs both"),
    ],
)
def test_disagreeing_tags_are_refused_naming_both(tags, keys, named) -> None:
    with pytest.raises(PartitionMismatch, match=named):
        check_run_partitions(tags, keys)


def test_partition_tags_given_at_a_backfills_launch_are_refused() -> None:
    with pytest.raises(PartitionMismatch, match="dagster/partition/market"):
        check_run_partitions(
            ONE, ["2026-11-16|B3"], backfill_tags={"dagster/partition/market": "B3", "team": "x"}
        )
    assert check_run_partitions(ONE, ["2026-11-16|B3"], backfill_tags={"dagster/from_ui": "true"})


def test_a_run_with_disagreeing_tags_writes_nothing(pipeline: Pipeline) -> None:
    job = pipeline.defs.resolve_job_def(OVERNIGHT_JOB)
    with pipeline.engine.connect() as conn:
        before = [
            conn.scalar(select(func.count()).select_from(t))
            for t in (calculation_events_table, exchange_rates_table)
        ]
    result = job.execute_in_process(
        instance=pipeline.instance,
        raise_on_error=False,
        tags={
            "dagster/partition/date": "2026-11-02",
            "dagster/partition/market": "B3",
            "dagster/asset_partition_range_start": "2026-11-03|TSE",
            "dagster/asset_partition_range_end": "2026-11-04|TSE",
        },
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    assert failure.step_key == "exchange_rates"
    text = failure.step_failure_data.user_failure_data.description
    assert "2026-11-02|B3" in text and "2026-11-03|TSE, 2026-11-04|TSE" in text
    assert "Nothing was written" in text
    # Not retried, and no other step ran.
    kinds = [e.event_type for e in result.all_events if e.step_key]
    assert DagsterEventType.STEP_UP_FOR_RETRY not in kinds
    assert {e.step_key for e in result.all_events if e.is_step_start} == {"exchange_rates"}
    with pipeline.engine.connect() as conn:
        after = [
            conn.scalar(select(func.count()).select_from(t))
            for t in (calculation_events_table, exchange_rates_table)
        ]
    assert after == before
