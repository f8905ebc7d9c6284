"""The overnight job built from this process's environment, for runs whose steps execute in
other processes (multiprocess, celery workers): each of them rebuilds it with
`build_reconstructable_job(__name__, "overnight_job")` from the same environment."""

from __future__ import annotations

from dagster import JobDefinition

from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.settings import load_settings


def overnight_job() -> JobDefinition:
    return definitions_for(load_settings()).resolve_job_def(OVERNIGHT_JOB)
