"""The `overnight` Dagster logger: a run's log records (its steps' lines and Dagster's
events) into this process's Python logging, where the `overnight` command writes them in
`LOG_FORMAT` (`overnight run`, `demo` and `reexecute` select it in their run config). Runs
that do not select it keep Dagster's default console logger."""

# No `from __future__ import annotations`: Dagster inspects the init context annotation.

import logging

from dagster import Field, InitLoggerContext, colored_console_logger, logger

PROCESS_LOGGER = "overnight"
PYTHON_LOGGER = "overnight_pipeline.run"


@logger(
    {"log_level": Field(str, is_required=False, default_value="INFO")},
    description="The run's log into the process's Python logging (`overnight_pipeline.run`).",
)
def process_logger(init_context: InitLoggerContext) -> logging.Logger:
    found = logging.getLogger(PYTHON_LOGGER)
    found.setLevel(init_context.logger_config["log_level"].upper())
    return found


LOGGERS = {"console": colored_console_logger, PROCESS_LOGGER: process_logger}
