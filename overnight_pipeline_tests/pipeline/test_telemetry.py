"""The `overnight-scoring-job` span (BEHAVIOUR §9), captured with an in-memory exporter
from real runs."""

from __future__ import annotations

from datetime import date

import pytest
from dagster import DagsterEventType, ExecuteInProcessResult, build_run_status_sensor_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import NoOpTracerProvider, StatusCode

from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.defs.partitions import partition_key
from overnight_pipeline.defs.resources import Tracing
from overnight_pipeline.defs.sensors import (
    FAILED_SENSOR,
    SUCCEEDED_SENSOR,
    overnight_job_run_failed,
    overnight_job_run_succeeded,
)
from overnight_pipeline.settings import SettingsError, load_settings
from overnight_pipeline.storage.job_runs import job_run
from overnight_pipeline.telemetry import JOB_ATTRIBUTES, SPAN_NAME, exporter_names, tracer_provider
from overnight_pipeline_tests.api.netfaults import closed_port
from overnight_pipeline_tests.pipeline.conftest import DAY, Pipeline, sensor_resources

# The tracing resource a test binds: spans go to this test's provider.
_provider: TracerProvider | None = None


class TestTracing(Tracing):
    __test__ = False

    def provider(self) -> TracerProvider | None:
        return _provider


class BrokenTracing(Tracing):
    def provider(self) -> TracerProvider | None:
        raise ValueError("OTEL_TRACES_EXPORTER: no installed span exporter named 'zipkin'")


STEPS = {  # the steps of an XETRA run of one shard (DAY)
    "exchange_rates",
    "asset_prices",
    "asset_fundamentals",
    "scores_and_recommendations.plan_shards",
    f"scores_and_recommendations.score_and_recommend_shard[XETRA_{DAY:%Y%m%d}_shard_0_of_1]",
    "scores_and_recommendations.collect_shards",
    "recommendation_cache",
}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def finish(pipeline: Pipeline, result: ExecuteInProcessResult, exporter: InMemorySpanExporter):
    """Let the job-run sensor record the finished run with an in-memory span exporter."""
    global _provider
    _provider = TracerProvider()
    _provider.add_span_processor(SimpleSpanProcessor(exporter))
    sensors = {
        SUCCEEDED_SENSOR: overnight_job_run_succeeded,
        FAILED_SENSOR: overnight_job_run_failed,
    }
    name = SUCCEEDED_SENSOR if result.success else FAILED_SENSOR
    kind = DagsterEventType.RUN_SUCCESS if result.success else DagsterEventType.RUN_FAILURE
    event = next(e for e in result.all_events if e.event_type == kind)
    with build_run_status_sensor_context(
        sensor_name=name,
        dagster_event=event,
        dagster_instance=pipeline.instance,
        dagster_run=result.dagster_run,
        resources=sensor_resources(pipeline.settings, tracing=TestTracing()),
    ) as context:
        sensors[name](context)


def job_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [s for s in exporter.get_finished_spans() if s.name == SPAN_NAME]
    return span


def test_a_run_emits_one_job_span_with_every_attribute_and_a_child_per_asset(
    pipeline: Pipeline, exporter: InMemorySpanExporter
) -> None:
    result = pipeline.run("XETRA", DAY)
    assert result.success
    finish(pipeline, result, exporter)

    span = job_span(exporter)
    attrs = dict(span.attributes or {})
    assert set(JOB_ATTRIBUTES) <= set(attrs)
    meta = {
        e.asset_key.to_user_string(): {k: v.value for k, v in e.materialization.metadata.items()}
        for e in result.get_asset_materialization_events()
    }
    users = meta["asset_scores"]["users_total"]
    assert attrs["users_total"] == users and attrs["users_success"] == users
    assert attrs["users_failed"] == 0
    assert attrs["assets_scored"] == meta["asset_scores"]["assets_scored"] > 0
    assert (
        attrs["recommendations_generated"] == meta["recommendations"]["recommendations_generated"]
    )
    for timing in ("fetch_rates_ms", "process_users_ms", "cache_warm_ms"):
        assert isinstance(attrs[timing], int) and attrs[timing] > 0, timing
    assert attrs["overnight.market"] == "XETRA" and attrs["overnight.status"] == "completed"
    assert attrs["dagster.run_id"] == result.run_id
    assert span.status.status_code == StatusCode.OK

    # The span covers the run; each asset step is a child span inside it.
    record = pipeline.instance.get_run_record_by_id(result.run_id)
    assert record is not None and record.start_time and record.end_time
    assert span.start_time == pytest.approx(record.start_time * 1e9, abs=2e6)
    assert span.end_time == pytest.approx(record.end_time * 1e9, abs=2e6)
    children = [s for s in exporter.get_finished_spans() if s.parent is not None]
    assert {c.name for c in children} == STEPS
    for child in children:
        assert child.parent is not None and child.parent.span_id == span.context.span_id
        assert child.context.trace_id == span.context.trace_id
        assert span.start_time <= child.start_time <= child.end_time <= span.end_time
    scores = next(c for c in children if c.name == "scores_and_recommendations.collect_shards")
    assert (scores.attributes or {})["overnight.users_total"] == users

    # Recording the run again (a repeated tick) emits nothing more.
    finish(pipeline, result, exporter)
    assert len(exporter.get_finished_spans()) == 1 + len(STEPS)


def test_a_failed_run_has_an_error_span_with_the_message(
    pipeline: Pipeline, exporter: InMemorySpanExporter
) -> None:
    settings = pipeline.settings.model_copy(
        update={"redis_url": f"redis://127.0.0.1:{closed_port()}/0", "retry_delay_seconds": 0.01}
    )
    defs = definitions_for(settings, env_vars=False)
    result = defs.resolve_job_def(OVERNIGHT_JOB).execute_in_process(
        instance=pipeline.instance,
        partition_key=partition_key("LSE", date(2026, 11, 26)),
        raise_on_error=False,
    )
    assert not result.success
    finish(pipeline, result, exporter)
    span = job_span(exporter)
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description and "recommendation_cache" in span.status.description
    assert "Redis" in span.status.description
    assert set(JOB_ATTRIBUTES) <= set(span.attributes or {})
    cache = next(s for s in exporter.get_finished_spans() if s.name == "recommendation_cache")
    assert cache.status.status_code == StatusCode.ERROR


def test_the_exporter_follows_the_otel_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_SDK_DISABLED",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ):
        monkeypatch.delenv(name, raising=False)
    assert exporter_names(load_settings()) == ()
    assert isinstance(tracer_provider(load_settings()), NoOpTracerProvider)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    assert exporter_names(load_settings()) == ("otlp",)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console,otlp")
    assert exporter_names(load_settings()) == ("console", "otlp")
    provider = tracer_provider(load_settings())
    assert isinstance(provider, TracerProvider)
    assert tracer_provider(load_settings()) is provider  # one per process and choice
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "zipkin")
    with pytest.raises(
        SettingsError, match="OTEL_TRACES_EXPORTER: names no installed span exporter 'zipkin'"
    ):
        load_settings()
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert exporter_names(load_settings()) == ()


def test_a_broken_exporter_setting_never_costs_the_job_run_row(pipeline: Pipeline) -> None:
    result = pipeline.run("NASDAQ", date(2026, 11, 25))
    succeeded = overnight_job_run_succeeded
    event = next(e for e in result.all_events if e.event_type == DagsterEventType.RUN_SUCCESS)
    with build_run_status_sensor_context(
        sensor_name=SUCCEEDED_SENSOR,
        dagster_event=event,
        dagster_instance=pipeline.instance,
        dagster_run=result.dagster_run,
        resources=sensor_resources(pipeline.settings, tracing=BrokenTracing()),
    ) as context:
        succeeded(context)
    with pipeline.engine.connect() as conn:
        recorded = job_run(conn, result.run_id)
    assert recorded is not None and recorded["status"] in ("completed", "partial")
