"""The overnight job built from this process's environment, for runs whose steps execute in
other processes (multiprocess, celery workers): each of them rebuilds it with
`build_reconstructable_job(__name__, "overnight_job")` from the same environment."""

from __future__ import annotations

from dagster import JobDefinition
from dagster._core.definitions.reconstruct import ReconstructableJob, build_reconstructable_job

from overnight_pipeline.definitions import definitions_for
from overnight_pipeline.defs.jobs import OVERNIGHT_JOB
from overnight_pipeline.settings import load_settings


def overnight_job() -> JobDefinition:
    return definitions_for(load_settings()).resolve_job_def(OVERNIGHT_JOB)


def reconstructable_job() -> ReconstructableJob:
    """The job rebuilt from the environment as it is now. Dagster keeps the last job a
    process reconstructed (an `lru_cache` on `ReconstructableJob.get_definition`, keyed by
    the code pointer, the same for every test here): a test that set other settings in the
    environment than the test before it must not get that one."""
    ReconstructableJob.get_definition.cache_clear()
    ReconstructableJob.get_repository_definition.cache_clear()
    return build_reconstructable_job(__name__, "overnight_job")
