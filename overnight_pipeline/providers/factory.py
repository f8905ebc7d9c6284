"""Build the provider chain the pipeline uses from settings (BEHAVIOUR §10)."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine

from overnight_pipeline.core.markets import load_markets
from overnight_pipeline.providers.base import MarketDataProvider
from overnight_pipeline.providers.fallback import FallbackProvider
from overnight_pipeline.providers.files import (
    FUNDAMENTALS_FILE,
    PRICES_FILE,
    RATES_FILE,
    FilesProvider,
)
from overnight_pipeline.providers.http import HttpProvider
from overnight_pipeline.providers.resilience import HttpOptions
from overnight_pipeline.providers.stored import StoredProvider
from overnight_pipeline.providers.synthetic import SyntheticProvider
from overnight_pipeline.settings import Settings


class MarketDataError(ValueError):
    """MARKET_DATA names a source that cannot be used; the message starts with the variable."""


def check_files_dir(spec: str) -> Path:
    """The directory of a `files:<dir>` MARKET_DATA value, refused unless it holds the three
    CSV files (a run without them would only end `partial` with every price missing)."""
    directory = Path(spec.removeprefix("files:"))
    if not directory.is_dir():
        what = "is not a directory" if directory.exists() else "no such directory"
        raise MarketDataError(f"MARKET_DATA: {spec!r}: {what}")
    problems = []
    for name in (PRICES_FILE, FUNDAMENTALS_FILE, RATES_FILE):
        path = directory / name
        try:
            with path.open("rb"):
                pass
        except FileNotFoundError:
            problems.append(f"{name} is missing")
        except OSError as exc:
            problems.append(f"{name} cannot be read ({exc.strerror})")
    if problems:
        raise MarketDataError(f"MARKET_DATA: {spec!r}: " + ", ".join(problems))
    return directory


def build_provider(
    spec: str, settings: Settings, *, http_options: HttpOptions | None = None
) -> MarketDataProvider:
    """One provider from a MARKET_DATA value: `synthetic`, `files:<dir>` or `http`."""
    if spec == "synthetic":
        return SyntheticProvider(load_markets(settings.markets_file))
    if spec.startswith("files:") and len(spec) > len("files:"):
        return FilesProvider(check_files_dir(spec))
    if spec == "http":
        if not settings.rates_url or not settings.prices_url:
            raise ValueError("MARKET_DATA=http needs RATES_URL and PRICES_URL")
        options = http_options or HttpOptions(rate_limit=settings.provider_rate_limit)
        return HttpProvider(
            settings.rates_url,
            settings.prices_url,
            batch_size=settings.provider_batch_size,
            options=options,
        )
    raise MarketDataError(f"MARKET_DATA must be 'synthetic', 'http' or 'files:<dir>', got {spec!r}")


def provider_from_settings(
    settings: Settings,
    *,
    engine: Engine | None = None,
    secondary: str | MarketDataProvider | None = None,
    http_options: HttpOptions | None = None,
) -> FallbackProvider:
    """primary (MARKET_DATA) → optional `secondary` (a MARKET_DATA-style spec or a
    provider) → the newest stored values in `engine`'s database, marked stale."""
    chain = [build_provider(settings.market_data, settings, http_options=http_options)]
    if secondary is not None:
        chain.append(
            build_provider(secondary, settings, http_options=http_options)
            if isinstance(secondary, str)
            else secondary
        )
    if engine is not None:
        chain.append(StoredProvider(engine))
    return FallbackProvider(chain)
