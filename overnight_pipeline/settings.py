"""Settings: the only module that reads the environment (BEHAVIOUR §10)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".data")
_PASSWORD = re.compile(r"(://[^:/@]*:)[^/]*@")


def normalise_database_url(value: str) -> str:
    """The SQLAlchemy URL for DATABASE_URL; raises ValueError for an unsupported scheme."""
    if not value.startswith(("postgresql", "sqlite")):
        raise ValueError("must be a postgresql:// or sqlite:// SQLAlchemy URL")
    if value.startswith("postgresql://"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is what we ship.
        value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
    return value


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***: safe for messages and logs (a regex, so a
    URL too broken to parse is masked too)."""
    return _PASSWORD.sub(r"\1***@", url)


def _check_sqlalchemy_url(value: str, drivers: tuple[str, ...]) -> None:
    """A URL SQLAlchemy parses, with a valid port, a shipped driver and a database name."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(value)
    except ArgumentError:
        raise ValueError("is not a URL (scheme://user@host:port/database)") from None
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    try:
        port = url.port
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"has port {port}, outside 1-65535")
    if url.get_backend_name() == "sqlite":
        return
    if url.get_driver_name() not in drivers:
        raise ValueError(f"has driver {url.get_driver_name()!r}; use {' or '.join(drivers)}")
    if not url.database:
        raise ValueError("names no database (…/dbname)")


def _check_http_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError("must be an http:// or https:// URL with a host")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError("has a port that is not a number in 1-65535") from None


def _check_redis_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ValueError("must start with redis://, rediss:// or unix://")
    if parts.scheme == "unix":
        if not parts.path:
            raise ValueError("names no socket path (unix:///path/to/redis.sock)")
        return
    if not parts.hostname:
        raise ValueError("names no host (redis://host:port/db)")
    try:
        parts.port  # noqa: B018 - raises for a bad port
    except ValueError:
        raise ValueError("has a port that is not a number in 1-65535") from None
    db = parts.path.strip("/")
    query_db = [v for k, v in parse_qsl(parts.query) if k == "db"]
    for candidate in ([db] if db else []) + query_db:
        # redis-py would quietly fall back to database 0 for /abc.
        if not candidate.isascii() or not candidate.isdigit() or int(candidate) > 1_000_000:
            raise ValueError(f"has database {candidate!r}; the path must be a database number (/0)")


def check_cron(value: str) -> None:
    """The cron expression as Dagster's schedules parse it (ValueError if Dagster would not)."""
    # Imported here: Dagster is slow to import and only the pipeline's processes need it
    # (docs/PERFORMANCE.md, "Figures once quoted in the code").
    from dagster._utils.schedules import has_out_of_range_cron_interval, is_valid_cron_string

    if not is_valid_cron_string(value):
        raise ValueError("is not a five-field cron expression Dagster accepts, like '0 4 * * 1-5'")
    if has_out_of_range_cron_interval(value):
        raise ValueError("has a step larger than its field's range (e.g. */90 minutes)")


# `otlp` is registered by the opentelemetry-exporter-otlp meta package; the HTTP exporter we
# ship registers `otlp_proto_http`.
OTLP_ALIASES: dict[str, tuple[str, ...]] = {"otlp": ("otlp", "otlp_proto_http")}


def installed_span_exporters() -> set[str]:
    """Names OTEL_TRACES_EXPORTER may use: installed exporters, their aliases and `none`."""
    from importlib.metadata import entry_points

    found = {ep.name for ep in entry_points(group="opentelemetry_traces_exporter")}
    aliases = {a for a, names in OTLP_ALIASES.items() if found & set(names)}
    return found | aliases | {"none"}


def is_set(name: str) -> bool:
    """Whether the environment sets `name` (Dagster resources then read it via EnvVar, so the
    value never shows in the UI)."""
    return bool(os.environ.get(name))


class SettingsError(ValueError):
    """An environment variable holds a value the pipeline cannot use."""


class Settings(BaseSettings):
    """Everything an operator can set, with its default."""

    model_config = SettingsConfigDict(
        env_prefix="", case_sensitive=False, extra="ignore", frozen=True
    )

    database_url: str = Field(
        default=f"sqlite:///{DEFAULT_DATA_DIR / 'overnight.db'}",
        description="SQLAlchemy URL of the app database (PostgreSQL in production).",
    )
    redis_url: str = Field(
        default="redis://127.0.0.1:6379/0", description="Redis for the recommendation cache."
    )
    dagster_pg_url: str | None = Field(
        default=None,
        description="Dagster instance storage (postgresql+psycopg2://...); unset = local files.",
    )
    market_data: str = Field(default="synthetic", description="synthetic | files:<dir> | http")
    rates_url: str | None = Field(default=None, description="Frankfurter-compatible rates API.")
    prices_url: str | None = Field(default=None, description="Prices/fundamentals JSON API.")
    cache_prefix: str = Field(default="", description="Namespace prepended to every Redis key.")
    dashboard_secret: str = Field(
        default="dev-only-secret-change-me-0123456789abcdef",
        min_length=32,
        description="HS256 secret for dashboard tokens (at least 32 characters).",
    )
    overnight_job_cron: str | None = Field(
        default=None, description="Cron overriding every market's schedule (market timezone)."
    )
    markets_file: Path | None = Field(
        default=None, description="JSON file overriding the six default markets."
    )
    user_batch_size: Annotated[int, Field(gt=0, le=100_000)] = 1000
    user_shards: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Shards of a partition's users (one Dagster step each, by a stable hash of "
        "the user id); a run can override it in the launchpad.",
    )
    overnight_executor: Literal["auto", "in_process", "multiprocess", "celery"] = Field(
        default="auto",
        description="Executor of the overnight job: auto = in_process for one shard, "
        "multiprocess for more; celery = dagster-celery workers (CELERY_BROKER_URL).",
    )
    celery_broker_url: str = Field(
        default="redis://127.0.0.1:6379/14",
        description="Broker (and result backend) of the celery executor.",
    )
    replay_sample: int = Field(
        default=25,
        ge=0,
        le=10_000,
        description="Users of each calculation replayed from their events by the replay check.",
    )
    provider_batch_size: Annotated[int, Field(gt=0, le=10_000)] = 50
    provider_rate_limit: Annotated[float, Field(gt=0, allow_inf_nan=False)] = 20.0
    max_failed_user_ratio: Annotated[float, Field(ge=0, le=1, allow_inf_nan=False)] = 0.05
    retry_delay_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="First delay of a step's retries (exponential backoff, full jitter).",
    )
    sensor_interval_seconds: int = Field(
        default=30,
        ge=1,
        le=3600,
        description="How often the job-run sensors look for new run events.",
    )
    retention_batch_size: int = Field(
        default=5000,
        gt=0,
        le=100_000,
        description="Rows deleted per transaction by the audit retention job.",
    )
    alert_webhook_url: str | None = Field(
        default=None,
        description="Alerts (missed deadline, failed run, partial run above the limit, replay "
        "mismatch) POSTed here as JSON with a Slack-compatible `text`; unset: none sent.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text", description="text, or json: one JSON object per line."
    )
    metrics: str = Field(
        default="same",
        description="GET /metrics (Prometheus): off, same (the dashboard's port) or a port.",
    )
    dagster_history_days: Annotated[int, Field(ge=1, le=36_500)] = Field(
        default=90,
        description="Dagster runs and their event logs older than this are pruned (days).",
    )
    otel_sdk_disabled: bool = Field(default=False, description="OTEL_SDK_DISABLED: no spans.")
    otel_service_name: str = Field(
        default="overnight-pipeline",
        min_length=1,
        description="OTEL_SERVICE_NAME of the pipeline's spans.",
    )
    otel_traces_exporter: str | None = Field(
        default=None,
        description="OTEL_TRACES_EXPORTER: otlp, console or none (default: otlp when an OTLP "
        "endpoint is set, otherwise none).",
    )
    otel_exporter_otlp_endpoint: str | None = Field(
        default=None, description="OTEL_EXPORTER_OTLP_ENDPOINT (read by the OTLP exporter)."
    )
    otel_exporter_otlp_traces_endpoint: str | None = Field(
        default=None, description="OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (read by the exporter)."
    )
    # Read by the OpenTelemetry SDK itself; validated here so a bad one stops the command at
    # start instead of failing (or being ignored) after the work.
    otel_exporter_otlp_protocol: str | None = None
    otel_exporter_otlp_traces_protocol: str | None = None
    otel_exporter_otlp_timeout: Annotated[int, Field(ge=0)] | None = None
    otel_exporter_otlp_traces_timeout: Annotated[int, Field(ge=0)] | None = None
    otel_exporter_otlp_headers: str | None = None
    otel_exporter_otlp_traces_headers: str | None = None
    otel_resource_attributes: str | None = None
    otel_bsp_schedule_delay: Annotated[int, Field(ge=0)] | None = None
    otel_bsp_export_timeout: Annotated[int, Field(ge=0)] | None = None
    otel_bsp_max_queue_size: Annotated[int, Field(gt=0)] | None = None
    otel_bsp_max_export_batch_size: Annotated[int, Field(gt=0)] | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any, info: Any) -> Any:
        # `FOO=` in an env file means "not set" for the optional variables.
        field = cls.model_fields[info.field_name]
        if value == "" and field.default is None:
            return None
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        value = normalise_database_url(value)
        _check_sqlalchemy_url(value, ("psycopg",))
        return value

    @field_validator("redis_url", "celery_broker_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        _check_redis_url(value)
        return value

    @field_validator("dagster_pg_url")
    @classmethod
    def _dagster_pg_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # SQLAlchemy 2.1 reads a plain URL as psycopg 3, through which dagster-postgres
            # fails on every event write.
            value = "postgresql+psycopg2://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+psycopg2://"):
            raise ValueError("must be a postgresql+psycopg2:// URL")
        _check_sqlalchemy_url(value, ("psycopg2",))
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str) -> str:
        if value in ("off", "same"):
            return value
        if value.isdigit() and 1 <= int(value) <= 65535:
            return str(int(value))
        raise ValueError("must be 'off', 'same' or a port number in 1-65535")

    @field_validator(
        "rates_url",
        "prices_url",
        "alert_webhook_url",
        "otel_exporter_otlp_endpoint",
        "otel_exporter_otlp_traces_endpoint",
    )
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_http_url(value)
        return value

    @field_validator("market_data")
    @classmethod
    def _market_data(cls, value: str) -> str:
        if value in ("synthetic", "http"):
            return value
        if value.startswith("files:") and len(value) > len("files:"):
            return value
        raise ValueError("must be 'synthetic', 'http' or 'files:<dir>'")

    @field_validator("overnight_job_cron")
    @classmethod
    def _cron(cls, value: str | None) -> str | None:
        if value is not None:
            check_cron(value)
        return value

    @field_validator("otel_sdk_disabled", mode="before")
    @classmethod
    def _otel_bool(cls, value: Any) -> Any:
        # The SDK reads only "true" (any case) as true; "yes" or "1" would disagree with it.
        if isinstance(value, str):
            if value.strip().lower() not in ("true", "false"):
                raise ValueError("must be true or false")
            return value.strip().lower() == "true"
        return value

    @field_validator("otel_traces_exporter")
    @classmethod
    def _otel_exporter(cls, value: str | None) -> str | None:
        if value is None:
            return None
        names = [n.strip().lower() for n in value.split(",") if n.strip()]
        known = installed_span_exporters()
        unknown = [n for n in names if n not in known]
        if not names or unknown:
            raise ValueError(
                f"names no installed span exporter {', '.join(map(repr, unknown))}; "
                f"use one of {', '.join(sorted(known))}"
            )
        return value

    @field_validator("otel_exporter_otlp_protocol", "otel_exporter_otlp_traces_protocol")
    @classmethod
    def _otel_protocol(cls, value: str | None) -> str | None:
        # The OTLP exporter we ship speaks HTTP with protobuf bodies only.
        if value is not None and value != "http/protobuf":
            raise ValueError("must be http/protobuf (the installed OTLP exporter)")
        return value

    @field_validator(
        "otel_exporter_otlp_headers",
        "otel_exporter_otlp_traces_headers",
        "otel_resource_attributes",
    )
    @classmethod
    def _otel_pairs(cls, value: str | None) -> str | None:
        if value is None:
            return None
        for pair in value.split(","):
            key, sep, _ = pair.partition("=")
            if pair.strip() and (not sep or not key.strip()):
                raise ValueError("must be comma-separated key=value pairs")
        return value

    @model_validator(mode="after")
    def _otel_batch_fits_queue(self) -> Settings:
        # The SDK's defaults (2048, 512); its BatchSpanProcessor refuses a batch above the queue.
        queue = self.otel_bsp_max_queue_size or 2048
        if (self.otel_bsp_max_export_batch_size or min(512, queue)) > queue:
            raise ValueError(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE"
            )
        return self

    @model_validator(mode="after")
    def _http_needs_urls(self) -> Settings:
        if self.market_data == "http":
            missing = [n for n in ("rates_url", "prices_url") if not getattr(self, n)]
            if missing:
                raise ValueError(
                    "MARKET_DATA=http needs " + " and ".join(m.upper() for m in missing)
                )
        return self

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")


_SECRETS = {"dashboard_secret"}
_URLS = {
    "database_url",
    "redis_url",
    "celery_broker_url",
    "dagster_pg_url",
    "rates_url",
    "prices_url",
    "otel_exporter_otlp_endpoint",
    "otel_exporter_otlp_traces_endpoint",
}
_HEADERS = {"otel_exporter_otlp_headers", "otel_exporter_otlp_traces_headers"}


def shown(name: str, value: object) -> str:
    """How a message shows the value of setting `name`: never a secret or a password."""
    if name in _SECRETS or name in _HEADERS:
        return f"<{len(str(value))} characters, not shown>"
    text = str(value)
    if name in _URLS:
        text = mask_url(text)
    return repr(text if len(text) <= 200 else text[:200] + "…")


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises `SettingsError` naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors(include_url=False):
            field = "_".join(str(p) for p in err["loc"])
            name = field.upper() or "settings"
            value = err.get("input")
            got = "" if isinstance(value, dict) else f" (got {shown(field, value)})"
            lines.append(f"{name}: {err['msg'].removeprefix('Value error, ')}{got}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return load_settings()
