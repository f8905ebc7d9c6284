"""The overnight job built from this process's environment, for runs whose steps execute in
other processes (multiprocess, celery workers): each of them rebuilds it with
`build_reconstructable_job(__name__, "overnight_job")` from the same environment."""

from __future__ import annotations

from dagster import JobDefinition

from overnight_pipeline.defs import OVERNIGHT_JOB, build_definitions
from overnight_pipeline.settings import load_settings


def overnight_job() -> JobDefinition:
    return build_definitions(load_settings()).resolve_job_def(OVERNIGHT_JOB)
