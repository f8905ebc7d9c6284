"""What Dagster loads (`workspace.yaml`, `dg dev`, `dg check defs`, the daemon): the `defs/`
folder — assets, checks, jobs, schedules and sensors, each module-level in a file named for
what it holds — merged with the resources, default executor and loggers built from the one
`Settings` object (the process environment). `dg list defs` shows the inventory.

Tests and the runner build the same thing from their own settings with `definitions_for`.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import dagster as dg

from overnight_pipeline.defs.loggers import LOGGERS
from overnight_pipeline.defs.resources import resources_from
from overnight_pipeline.defs.shards import ShardPlanIOManager
from overnight_pipeline.settings import Settings, get_settings


@cache
def _defs_folder() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


# Loaded on import, as the forkserver of the multiprocess executor imports this module once
# (`defs.executors.PRELOAD`): each step's process then starts with the folder loaded (≈ 0.6 s
# a step otherwise).
_defs_folder()


def definitions_for(settings: Settings, *, env_vars: bool = True) -> dg.Definitions:
    """The `defs/` folder with the resources of `settings`; with `env_vars`, values set in the
    environment reach the resources as `EnvVar`s (tests pass explicit settings and turn
    this off)."""
    return dg.Definitions.merge(
        _defs_folder(),
        dg.Definitions(
            resources={
                **resources_from(settings, env_vars=env_vars),
                "shard_plan_io_manager": ShardPlanIOManager(),
            },
            # Asset jobs the UI builds (Materialize, asset backfills) run in one process.
            executor=dg.in_process_executor,
            loggers=LOGGERS,
        ),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return definitions_for(get_settings())


def job_named(name: str) -> dg.JobDefinition:
    """One job of `defs` (Dagster's `__ASSET_JOB` included): what `overnight reexecute`
    rebuilds with `build_reconstructable_job` to re-execute a run of it."""
    return definitions_for(get_settings()).resolve_job_def(name)
