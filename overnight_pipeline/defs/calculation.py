"""What every overnight step shares: the calculation it belongs to (one correlation id and
one `calculated_at` per partition of a run, stable across retries and re-executions) and how
it reports the run's partitions (one typed report each, summed into the step's metadata)."""

# No `from __future__ import annotations`: Dagster inspects the context annotation.

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime
from typing import Any

from dagster import (
    MetadataValue,
    OpExecutionContext,
)

from overnight_pipeline.core.audit import run_correlation_id
from overnight_pipeline.defs.partitions import guard_partitions, split_key
from overnight_pipeline.steps.reports import ReportT, combined

GROUP = "overnight"
SCORES_AND_RECOMMENDATIONS = "scores_and_recommendations"
# The provider steps of every run share the vendor's limit: at most the pool's limit of them
# run at once across runs (deploy/dagster.yaml `concurrency.pools`; one by default).
MARKET_DATA_POOL = "market_data"


def correlation_id(context: OpExecutionContext, key: str) -> uuid.UUID:
    """One calculation per partition of a run: stable across retries and re-executions,
    which share the root run id (BEHAVIOUR §4)."""
    root = context.run.root_run_id or context.run.run_id
    return run_correlation_id(root, key)


def calculated_at(context: OpExecutionContext) -> datetime:
    """When the calculation started: the creation time of the run's root run, the same for
    the run, its retries and its re-executions (like `correlation_id`). It stamps every
    audit row of the calculation and chooses their monthly partition, so a retried step can
    never write into another month than its first attempt."""
    root = context.run.root_run_id or context.run.run_id
    record = context.instance.get_run_record_by_id(root)
    if record is None:
        raise RuntimeError(f"root run {root} of run {context.run.run_id} is not in the instance")
    created = record.create_timestamp
    return created if created.tzinfo else created.replace(tzinfo=UTC)


def combined_report(reports: list[tuple[str, ReportT]]) -> ReportT:
    """The reports of the run's partitions as one: numbers summed, flags or-ed, text the
    first one's (`StepReport.combine`)."""
    return combined([report for _, report in reports])


def step_metadata(reports: list[tuple[str, ReportT]]) -> dict[str, Any]:
    """Totals over the run's partitions; the failed users (and, for a range, each partition's
    figures) as a markdown table: what the fields above do not already say."""
    totals = combined_report(reports)
    meta: dict[str, Any] = totals.to_metadata()
    meta["seconds"] = round(totals.seconds, 3)
    if len(reports) > 1:
        meta["partitions"] = len(reports)
    meta["failures"] = len(totals.failures)
    tables = [
        f"**{key}**\n\n{report.markdown()}"
        for key, report in reports
        if len(reports) > 1 or report.failures
    ]
    if tables:
        meta["summary"] = MetadataValue.md("\n\n".join(tables))
    return meta


def each_partition(
    context: OpExecutionContext, work: Callable[[str, date, str], ReportT]
) -> list[tuple[str, ReportT]]:
    reports = []
    for key in guard_partitions(context):
        market, day = split_key(key)
        report = work(market, day, key)
        context.log.info(f"{key}: {report.measures()}")
        reports.append((key, report))
    return reports
