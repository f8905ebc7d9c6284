"""Resources: the app database, the Redis cache and the market-data provider chain.

Nothing connects at import time: engines and clients are created when a run needs them and
disposed after it. Values set in the environment reach the resources through `EnvVar`, so
URLs with passwords never show in the Dagster UI.
"""

from __future__ import annotations

from typing import Any

import redis
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from opentelemetry.trace import TracerProvider
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine

from overnight_pipeline.alerts import Webhook
from overnight_pipeline.providers import MarketDataProvider, provider_from_settings
from overnight_pipeline.settings import (
    Settings,
    get_settings,
    is_set,
    load_settings,
    normalise_database_url,
)
from overnight_pipeline.storage.db import make_engine
from overnight_pipeline.telemetry import tracer_provider


class AppDatabase(ConfigurableResource):  # type: ignore[type-arg]
    """The application database (PostgreSQL in production, SQLite for the demo)."""

    url: str
    _engine: Engine | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self._engine = make_engine(normalise_database_url(self.url))

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        if self._engine is not None:
            self._engine.dispose()

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = make_engine(normalise_database_url(self.url))
        return self._engine


class CacheRedis(ConfigurableResource):  # type: ignore[type-arg]
    """The recommendation cache; short timeouts so a dead Redis fails fast."""

    url: str
    prefix: str = ""
    socket_timeout: float = 5.0

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url,
            socket_timeout=self.socket_timeout,
            socket_connect_timeout=self.socket_timeout,
            health_check_interval=30,
        )


class MarketData(ConfigurableResource):  # type: ignore[type-arg]
    """The provider chain of BEHAVIOUR §10: MARKET_DATA, then the newest stored values (stale)."""

    market_data: str = "synthetic"
    rates_url: str | None = None
    prices_url: str | None = None
    batch_size: int = 50
    rate_limit: float = 20.0

    def provider(self, engine: Engine) -> MarketDataProvider:
        settings = load_settings(
            market_data=self.market_data,
            rates_url=self.rates_url,
            prices_url=self.prices_url,
            provider_batch_size=self.batch_size,
            provider_rate_limit=self.rate_limit,
        )
        return provider_from_settings(settings, engine=engine)


class OvernightTuning(ConfigurableResource):  # type: ignore[type-arg]
    """The knobs of a night's work, shown (and editable per run) in the launchpad."""

    batch_size: int = Field(default=1000, gt=0, le=100_000, description="Users per batch.")
    user_shards: int = Field(
        default=1, ge=1, le=64, description="Shards (steps) of a partition's users."
    )
    max_failed_user_ratio: float = Field(
        default=0.05, ge=0, le=1, description="Failed-user ratio above which the check is red."
    )
    replay_sample: int = Field(
        default=25, ge=0, le=10_000, description="Users replayed from their events per run."
    )
    retry_delay_seconds: float = Field(
        default=2.0,
        ge=0,
        le=3600,
        description="First delay of a failed step's retries (then doubling, full jitter).",
    )


class Alerting(ConfigurableResource):  # type: ignore[type-arg]
    """Where the sensors' alerts go (ALERT_WEBHOOK_URL: a Slack-compatible webhook), or
    nowhere, and the failed-user ratio above which a partial run alerts."""

    webhook_url: str | None = None
    max_failed_user_ratio: float = Field(default=0.05, ge=0, le=1)

    def webhook(self) -> Webhook | None:
        return Webhook(self.webhook_url) if self.webhook_url else None


class Tracing(ConfigurableResource):  # type: ignore[type-arg]
    """The OpenTelemetry provider of the run spans the sensors emit, from the process's
    OTEL_* settings (one provider per process and exporter choice; a no-op one when nothing
    exports). Tests bind a subclass whose `provider` is their in-memory one."""

    def provider(self) -> TracerProvider | None:
        return tracer_provider(get_settings())


class Retention(ConfigurableResource):  # type: ignore[type-arg]
    """What the daily retention job keeps: the audit two years (fixed), Dagster's own run
    history `dagster_history_days` (DAGSTER_HISTORY_DAYS)."""

    batch_size: int = Field(
        default=5000, gt=0, le=100_000, description="Rows deleted per transaction on SQLite."
    )
    dagster_history_days: int = Field(
        default=90, ge=1, description="Dagster runs (and event logs) kept, in days."
    )


def resources_from(settings: Settings, *, env_vars: bool = True) -> dict[str, Any]:
    """Resources for `settings`; with `env_vars`, values set in the environment are passed
    as `EnvVar`s (tests pass explicit settings and turn this off)."""

    def env_or(name: str, value: Any) -> Any:
        return EnvVar(name) if env_vars and is_set(name) else value

    return {
        "database": AppDatabase(url=env_or("DATABASE_URL", settings.database_url)),
        "cache": CacheRedis(
            url=env_or("REDIS_URL", settings.redis_url), prefix=settings.cache_prefix
        ),
        "tuning": OvernightTuning(
            batch_size=settings.user_batch_size,
            user_shards=settings.user_shards,
            max_failed_user_ratio=settings.max_failed_user_ratio,
            replay_sample=settings.replay_sample,
            retry_delay_seconds=settings.retry_delay_seconds,
        ),
        "market_data": MarketData(
            market_data=settings.market_data,
            rates_url=settings.rates_url,
            prices_url=settings.prices_url,
            batch_size=settings.provider_batch_size,
            rate_limit=settings.provider_rate_limit,
        ),
        "alerting": Alerting(
            # A Slack webhook's URL is its secret: from the environment it stays an EnvVar.
            webhook_url=env_or("ALERT_WEBHOOK_URL", settings.alert_webhook_url),
            max_failed_user_ratio=settings.max_failed_user_ratio,
        ),
        "tracing": Tracing(),
        "retention": Retention(
            batch_size=settings.retention_batch_size,
            dagster_history_days=settings.dagster_history_days,
        ),
    }
