"""The step reports: the metadata a step emits is what the run ledger reads back, and a
measure that is missing or of another type fails loudly instead of reading as 0."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from dagster import DagsterRun

from overnight_pipeline.defs.run_facts import RunFacts
from overnight_pipeline.steps.reports import (
    CacheReport,
    CalculationReport,
    FundamentalsReport,
    MetadataError,
    PricesReport,
    RatesReport,
    StepReport,
    combined,
)

RATES = RatesReport(
    users=3,
    currencies=2,
    stored=1,
    source="synthetic",
    stale=False,
    stale_currencies="-",
    stale_age_hours=None,
    missing="-",
    seconds=0.5,
)
PRICES = PricesReport(
    users=3, assets=10, priced=9, stored=9, stale=0, missing=1, source="synthetic"
)
FUNDAMENTALS = FundamentalsReport(
    users=3, assets=10, fetched=10, stored=10, stale=0, missing=0, source="synthetic"
)
CALCULATION = CalculationReport(
    users_total=4,
    users_resumed=0,
    users_succeeded=3,
    users_failed=1,
    assets_scored=30,
    recommendations_generated=6,
    unallocated_users=0,
    rates_stale=False,
    stale_prices=0,
    tables_analyzed="-",
    failures=({"user": "u", "stage": "inputs", "error": "no rate"},),
)
CACHE = CacheReport(users=3, written=3, kept_newer=0, ttl_hours=24.0)
REPORTS: list[StepReport] = [RATES, PRICES, FUNDAMENTALS, CALCULATION, CACHE]


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: type(r).__name__)
def test_the_metadata_a_step_emits_reads_back_as_its_report(report: StepReport) -> None:
    # As the asset's metadata holds it: beside the measures, the asset's own entries.
    metadata = {**report.to_metadata(), "seconds": 1.25, "failures": 0, "partitions": 1}
    assert type(report).from_metadata(metadata).measures() == report.measures()


def test_the_measures_keep_their_order_and_the_unknown_ones_for_the_log_line() -> None:
    assert RATES.measures() == {
        "users": 3,
        "currencies": 2,
        "stored": 1,
        "source": "synthetic",
        "stale": False,
        "stale_currencies": "-",
        "stale_age_hours": None,
        "missing": "-",
    }
    assert "stale_age_hours" not in RATES.to_metadata()


def test_a_renamed_or_missing_measure_fails_loudly_instead_of_reading_as_zero() -> None:
    metadata = CACHE.to_metadata()
    metadata["cache_written"] = metadata.pop("written")
    with pytest.raises(MetadataError, match="CacheReport: the metadata has no 'written'"):
        CacheReport.from_metadata(metadata)
    with pytest.raises(MetadataError, match="'missing' is '3', not int"):
        PricesReport.from_metadata({**PRICES.to_metadata(), "missing": "3"})
    with pytest.raises(MetadataError, match="'stale' is 1, not bool"):
        RatesReport.from_metadata({**RATES.to_metadata(), "stale": 1})


def test_the_partitions_of_a_run_add_up_as_one_report() -> None:
    stale = RatesReport(
        users=2,
        currencies=1,
        stored=0,
        source="stored",
        stale=True,
        stale_currencies="EUR",
        stale_age_hours=30.0,
        missing="-",
        failures=({"user": "-", "stage": "rates", "error": "down"},),
        seconds=0.25,
    )
    total = combined([stale, RATES])
    assert total.measures() == {
        "users": 5,
        "currencies": 3,
        "stored": 1,
        "source": "stored",
        "stale": True,
        "stale_currencies": "EUR",
        "stale_age_hours": 30.0,
        "missing": "-",
    }
    assert total.failures == stale.failures and total.seconds == 0.75
    with pytest.raises(ValueError, match="no reports"):
        combined([])


def test_the_run_facts_read_a_report_only_of_an_asset_the_run_materialised() -> None:
    facts = RunFacts(
        run=DagsterRun(job_name="overnight_job", run_id="r1"),
        started_at=datetime(2026, 11, 30, tzinfo=UTC),
        ended_at=None,
        partition_keys=["2026-11-30|NYSE"],
        assets={"recommendation_cache": {**CACHE.to_metadata(), "partitions": 1}},
    )
    assert facts.report("recommendation_cache", CacheReport) == CACHE
    assert facts.report("asset_prices", PricesReport) is None
