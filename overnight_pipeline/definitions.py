"""The one `Definitions` object that `workspace.yaml` loads (`dagster dev`, the daemon)."""

from __future__ import annotations

from dagster import JobDefinition

from overnight_pipeline.defs import build_definitions
from overnight_pipeline.settings import get_settings

defs = build_definitions(get_settings())


def job_named(name: str) -> JobDefinition:
    """One job of `defs` (Dagster's `__ASSET_JOB` included): what `overnight reexecute`
    rebuilds with `build_reconstructable_job` to re-execute a run of it."""
    return defs.resolve_job_def(name)
