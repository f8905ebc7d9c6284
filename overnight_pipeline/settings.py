"""Settings: the only module that reads the environment (SPEC §10)."""

from __future__ import annotations

import os
import re
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_DATA_DIR = Path(".data")
_CRON_FIELD = re.compile(r"^[\d*/,\-A-Za-z?LW#]+$")


def normalise_database_url(value: str) -> str:
    """The SQLAlchemy URL for DATABASE_URL; raises ValueError for an unsupported scheme."""
    if not value.startswith(("postgresql", "sqlite")):
        raise ValueError("must be a postgresql:// or sqlite:// SQLAlchemy URL")
    if value.startswith("postgresql://"):
        # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3, which is what we ship.
        value = "postgresql+psycopg://" + value.removeprefix("postgresql://")
    return value


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
    provider_batch_size: Annotated[int, Field(gt=0, le=10_000)] = 50
    provider_rate_limit: Annotated[float, Field(gt=0)] = 20.0
    max_failed_user_ratio: Annotated[float, Field(ge=0, le=1)] = 0.05
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
    otel_sdk_disabled: bool = Field(default=False, description="OTEL_SDK_DISABLED: no spans.")
    otel_service_name: str = Field(
        default="overnight-pipeline", description="OTEL_SERVICE_NAME of the pipeline's spans."
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

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalise_database_url(value)

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("dagster_pg_url")
    @classmethod
    def _dagster_pg_url(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        if value.startswith("postgresql://") or value.startswith("postgres://"):
            # dagster-postgres fails on every event write through psycopg 3 (DAGSTER_NOTES).
            value = "postgresql+psycopg2://" + value.split("://", 1)[1]
        if not value.startswith("postgresql+psycopg2://"):
            raise ValueError("must be a postgresql+psycopg2:// URL")
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
        if value in (None, ""):
            return None
        assert value is not None
        fields = value.split()
        if len(fields) != 5 or not all(_CRON_FIELD.match(f) for f in fields):
            raise ValueError("must be a five-field cron expression like '0 4 * * 1-5'")
        return value

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


def load_settings(**overrides: object) -> Settings:
    """Read settings from the environment; a bad value raises `SettingsError` naming it."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper() or "settings"
            value = err.get("input")
            shown = "" if isinstance(value, dict) else f" (got {value!r})"
            lines.append(f"{name}: {err['msg']}{shown}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings of this process, read once."""
    return load_settings()
