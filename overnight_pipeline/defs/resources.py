"""Resources: the app database, the Redis cache and the market-data provider chain.

Nothing connects at import time: engines and clients are created when a run needs them and
disposed after it. Values set in the environment reach the resources through `EnvVar`, so
URLs with passwords never show in the Dagster UI.
"""

from __future__ import annotations

from typing import Any

import redis
from dagster import ConfigurableResource, EnvVar, InitResourceContext
from pydantic import Field, PrivateAttr
from sqlalchemy import Engine

from overnight_pipeline.providers import MarketDataProvider, provider_from_settings
from overnight_pipeline.settings import Settings, is_set, load_settings, normalise_database_url
from overnight_pipeline.storage.db import make_engine


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
        ),
        "market_data": MarketData(
            market_data=settings.market_data,
            rates_url=settings.rates_url,
            prices_url=settings.prices_url,
            batch_size=settings.provider_batch_size,
            rate_limit=settings.provider_rate_limit,
        ),
    }
