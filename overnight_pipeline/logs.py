"""Log lines of the project's processes: text, or one JSON object per line (`LOG_FORMAT`).

- `configure(log_format)`: the `overnight` command's process log (stderr): the project's
  loggers at INFO, others at WARNING. `uvicorn_logging` gives `serve`'s server the same.
- `JsonFormatter`: `time`, `level`, `logger`, `message`, then the record's own fields (the
  `extra=` of the call: an event's fields), the correlation id (the record's, or the one of
  the calculation this thread is working on) and, inside an OpenTelemetry span, `traceId`
  and `spanId`. A record of a Dagster run adds `runId`, `job`, `stepKey`.
- `DagsterHandler`: the handler class of `python_logs.dagster_handler_config` in
  deploy/dagster.yaml, so Dagster's own processes (daemon, webserver, code servers, run
  workers) write their runs' logs as JSON lines too.
- `mask_user`: a user id as logs show it (the first 8 characters).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson
from opentelemetry import trace

PROJECT_LOGGERS = ("overnight_pipeline", "dashboard_api")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

CORRELATION_ID: ContextVar[str | None] = ContextVar("overnight_correlation_id", default=None)
"""The calculation the current thread works on (set by the scoring step)."""

# deploy/dagster.yaml's `python_logs` handler is deliberate: without this, each run prints
# Dagster's beta warning about it (a plain line amid JSON ones). Set on import, which every
# process running the project's runs does before its first run log.
warnings.filterwarnings(
    "ignore", message="Handling yaml-defined logging configuration", category=Warning
)

_STANDARD = frozenset(
    [*logging.makeLogRecord({}).__dict__, "message", "asctime", "taskName", "color_message"]
)
_DAGSTER_META = "dagster_meta"
_configured = False


def mask_user(user_id: object) -> str:
    """A user id as the logs show it: its first 8 characters and an ellipsis."""
    return f"{str(user_id)[:8]}…"


@contextlib.contextmanager
def correlation(correlation_id: object) -> Iterator[None]:
    """Every JSON line written in this block (this thread) carries `correlation_id`."""
    token = CORRELATION_ID.set(str(correlation_id))
    try:
        yield
    finally:
        CORRELATION_ID.reset(token)


def fields_of(record: logging.LogRecord) -> dict[str, Any]:
    """What the call passed as `extra=`: the attributes a plain record does not have."""
    return {
        k: v
        for k, v in record.__dict__.items()
        if k not in _STANDARD and k != _DAGSTER_META and not k.startswith("_")
    }


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        meta = getattr(record, _DAGSTER_META, None)
        message = record.getMessage()
        doc: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if isinstance(meta, Mapping):
            # Dagster rewrites the message as "job - run id - step - message".
            doc["message"] = meta.get("orig_message") or message
            for key, name in (("run_id", "runId"), ("job_name", "job"), ("step_key", "stepKey")):
                if meta.get(key):
                    doc[name] = meta[key]
            event = meta.get("dagster_event")
            if event is not None and getattr(event, "event_type_value", None):
                doc["dagsterEvent"] = event.event_type_value
        doc.update(fields_of(record))
        cid = doc.get("correlationId") or CORRELATION_ID.get()
        if cid:
            doc["correlationId"] = str(cid)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            doc["traceId"] = format(span.trace_id, "032x")
            doc["spanId"] = format(span.span_id, "016x")
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(doc, default=str).decode()


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message`; a Dagster run's record as `step: message` (the run id
    is in the summary that follows)."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        meta = getattr(record, _DAGSTER_META, None)
        if isinstance(meta, Mapping) and meta.get("orig_message"):
            where = meta.get("step_key") or meta.get("job_name") or "run"
            record.message = f"{where}: {meta['orig_message']}"
        return super().formatMessage(record)


def formatter(log_format: str) -> logging.Formatter:
    return JsonFormatter() if log_format == "json" else TextFormatter()


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to the `sys.stderr` of the moment (a test's capture, a redirected stream)."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # no stream kept: one closed since is never flushed

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _: object) -> None:
        pass


_handler: logging.Handler | None = None


def configure(log_format: str) -> None:
    """The process log of an `overnight` command: stderr, in `log_format` (text or json)."""
    global _configured, _handler
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    _handler = _StderrHandler()
    _handler.setFormatter(formatter(log_format))
    root.addHandler(_handler)
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)  # a library's warning is a log line too
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO)
    _configured = True


def uvicorn_logging(log_format: str) -> dict[str, Any]:
    """`uvicorn.run` keywords for `log_format`: its own logging for text, JSON lines on
    stderr for json."""
    if log_format != "json":
        return {}
    handler = {"handlers": ["stderr"], "level": "INFO", "propagate": False}
    return {
        "log_config": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": f"{__name__}.JsonFormatter"}},
            "handlers": {"stderr": {"class": f"{__name__}._StderrHandler", "formatter": "json"}},
            "loggers": {"uvicorn": handler, "uvicorn.access": handler},
        }
    }


def _log_format() -> str:
    from overnight_pipeline.settings import SettingsError, get_settings

    try:
        return get_settings().log_format
    except SettingsError:
        return "text"


class DagsterHandler(logging.Handler):
    """`python_logs` handler (deploy/dagster.yaml) for Dagster's processes: each log record of
    a run (the steps' lines and Dagster's events) as a JSON line on stderr when
    `LOG_FORMAT=json`. Silent with `LOG_FORMAT=text`, where Dagster's console logger already
    prints them, and in an `overnight` command, whose own process log has them."""

    def __init__(self, level: int | str = logging.NOTSET) -> None:
        super().__init__(level)
        self.setFormatter(JsonFormatter())
        self._json = _log_format() == "json"

    def emit(self, record: logging.LogRecord) -> None:
        if _configured or not self._json:
            return
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)
