"""The overnight job's executor: one of Dagster's own, picked per run in the launchpad.

`execution: {config: {in_process: {}}}`, `{multiprocess: {max_concurrent: 2}}` or
`{celery: {broker: …, backend: …}}`: the run config selects Dagster's in-process,
multiprocess or dagster-celery executor, each with its own config schema. Without an
`execution` section (schedules, backfills, `overnight run`) the settings decide
(`OVERNIGHT_EXECUTOR`): `auto` runs one shard in process (a process per step costs seconds
a step: docs/PERFORMANCE.md, "Scale-out") and several shards on the multiprocess executor.
The default lives in the executor's own config field, not in the job's run config: a
partitioned asset job turns job config into partitioned config, which runs launched by tags
alone do not apply.
"""

from __future__ import annotations

from typing import Any

from dagster import (
    Executor,
    ExecutorDefinition,
    Field,
    InitExecutorContext,
    Selector,
    executor,
    in_process_executor,
    multiple_process_executor_requirements,
    multiprocess_executor,
)
from dagster_celery import celery_executor

from overnight_pipeline.settings import Settings

# Imported once by the forkserver, so that each step's process starts without importing
# Dagster, pandas and the pipeline nor building the definitions and their exchange calendars
# again, seconds per step (docs/PERFORMANCE.md, "Scale-out"); with them the instance's
# storage modules, which each step process otherwise imports to open the instance
# (≈ 0.36 CPU-s a step; dagster_postgres for an instance on PostgreSQL).
PRELOAD = [
    "overnight_pipeline.definitions",
    "dagster._core.storage.runs.sqlite",
    "dagster._core.storage.event_log.sqlite",
    "dagster._core.storage.schedules.sqlite",
    "dagster_postgres",
]

EXECUTORS: dict[str, ExecutorDefinition] = {
    "in_process": in_process_executor,
    "multiprocess": multiprocess_executor,
    "celery": celery_executor,
}


def default_execution(settings: Settings) -> dict[str, Any]:
    """The executor a run gets when its config names none."""
    kind = settings.overnight_executor
    if kind == "auto":
        kind = "in_process" if settings.user_shards == 1 else "multiprocess"
    if kind == "celery":
        broker = settings.celery_broker_url
        return {"celery": {"broker": broker, "backend": broker}}
    if kind == "multiprocess":
        return {"multiprocess": {"start_method": {"forkserver": {"preload_modules": PRELOAD}}}}
    return {kind: {}}


def overnight_executor(settings: Settings) -> ExecutorDefinition:
    """Dagster's in-process, multiprocess or celery executor, as the run config says."""

    def requirements(config: Any) -> Any:
        return [] if "in_process" in config else multiple_process_executor_requirements()

    @executor(
        name="overnight_executor",
        config_schema=Field(
            Selector({name: e.config_schema.as_field() for name, e in EXECUTORS.items()}),
            default_value=default_execution(settings),
            description="in_process, multiprocess or celery (dagster-celery workers).",
        ),
        requirements=requirements,
    )
    def _overnight_executor(init_context: InitExecutorContext) -> Executor:
        ((name, config),) = init_context.executor_config.items()
        target = EXECUTORS[name]
        return target.executor_creation_fn(  # type: ignore[misc]
            InitExecutorContext(
                job=init_context.job,
                executor_def=target,
                executor_config=config,
                instance=init_context.instance,
            )
        )

    return _overnight_executor
