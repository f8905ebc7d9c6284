"""The job-level OpenTelemetry span (BEHAVIOUR §9): `overnight-scoring-job`, one per run.

The run sensors emit it when they record a finished run, with the run's real start and end
times and one child span per asset step, so it works the same whatever executor or run
launcher ran the steps. The exporter follows the standard variables: `OTEL_TRACES_EXPORTER`
(`otlp`, `console`, `none`; default `otlp` when an OTLP endpoint is set, else `none`),
`OTEL_EXPORTER_OTLP_*`, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`,
`OTEL_SDK_DISABLED`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from importlib.metadata import entry_points
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Status, StatusCode

from overnight_pipeline.settings import OTLP_ALIASES, Settings

SPAN_NAME = "overnight-scoring-job"
TRACER_NAME = "overnight_pipeline"
SERVICE = "overnight-pipeline"
JOB_ATTRIBUTES = (
    "fetch_rates_ms",
    "process_users_ms",
    "cache_warm_ms",
    "users_total",
    "users_success",
    "users_failed",
    "assets_scored",
    "recommendations_generated",
)
_log = logging.getLogger(__name__)

_lock = threading.Lock()
_providers: dict[tuple[str, ...], trace.TracerProvider] = {}


def exporter_names(settings: Settings) -> tuple[str, ...]:
    """The exporters `settings` ask for, `()` for none."""
    if settings.otel_sdk_disabled:
        return ()
    raw = settings.otel_traces_exporter
    if raw is None:
        endpoint = (
            settings.otel_exporter_otlp_traces_endpoint or settings.otel_exporter_otlp_endpoint
        )
        raw = "otlp" if endpoint else "none"
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    return tuple(n for n in names if n != "none")


def _exporter(name: str) -> SpanExporter:
    found = {ep.name: ep for ep in entry_points(group="opentelemetry_traces_exporter")}
    for candidate in OTLP_ALIASES.get(name, (name,)):
        if candidate in found:
            exporter: SpanExporter = found[candidate].load()()
            return exporter
    raise ValueError(
        f"OTEL_TRACES_EXPORTER: no installed span exporter named {name!r} "
        f"(installed: {', '.join(sorted(found)) or 'none'})"
    )


def tracer_provider(settings: Settings) -> trace.TracerProvider:
    """One provider per process and exporter choice; a no-op one when nothing exports, or
    when the exporters cannot be built (a warning says why: telemetry never fails a run)."""
    names = exporter_names(settings)
    with _lock:
        if names not in _providers:
            _providers[names] = _build(names, settings)
        return _providers[names]


def _build(names: tuple[str, ...], settings: Settings) -> trace.TracerProvider:
    if not names:
        return trace.NoOpTracerProvider()
    try:
        provider = TracerProvider(
            resource=Resource.create({SERVICE_NAME: settings.otel_service_name})
        )
        for name in names:
            provider.add_span_processor(BatchSpanProcessor(_exporter(name)))
    except Exception as exc:
        _log.warning("OpenTelemetry is off for this process: %s", exc)
        return trace.NoOpTracerProvider()
    return provider


@dataclass(frozen=True)
class StepSpan:
    """One asset step of the run, as executed."""

    name: str
    start: datetime
    end: datetime
    ok: bool
    attributes: Mapping[str, Any] = field(default_factory=dict)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp() * 1_000_000_000)


def _attributes(values: Mapping[str, Any]) -> dict[str, Any]:
    """OpenTelemetry takes str, bool, int, float (or lists of them); None is left out."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, bool | int | float | str):
            out[key] = value
        elif value is not None:
            out[key] = str(value)
    return out


def emit_run_span(
    tracer: trace.Tracer,
    *,
    start: datetime,
    end: datetime,
    attributes: Mapping[str, Any],
    error: str | None = None,
    steps: Sequence[StepSpan] = (),
) -> None:
    """The `overnight-scoring-job` span with its child spans; status ERROR with `error`.
    Never raises: a failing tracer or exporter is logged as a warning."""
    try:
        _emit(tracer, start=start, end=end, attributes=attributes, error=error, steps=steps)
    except Exception as exc:
        _log.warning("could not emit the %s span: %s", SPAN_NAME, exc)


def _emit(
    tracer: trace.Tracer,
    *,
    start: datetime,
    end: datetime,
    attributes: Mapping[str, Any],
    error: str | None,
    steps: Sequence[StepSpan],
) -> None:
    span = tracer.start_span(SPAN_NAME, start_time=_ns(start), attributes=_attributes(attributes))
    parent = trace.set_span_in_context(span)
    for step in steps:
        child = tracer.start_span(
            step.name,
            context=parent,
            start_time=_ns(step.start),
            attributes=_attributes(step.attributes),
        )
        child.set_status(Status(StatusCode.OK if step.ok else StatusCode.ERROR))
        child.end(end_time=_ns(step.end))
    span.set_status(Status(StatusCode.ERROR, error) if error else Status(StatusCode.OK))
    span.end(end_time=_ns(end))
