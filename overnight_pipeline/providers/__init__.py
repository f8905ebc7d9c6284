"""Market data behind one interface: synthetic, files, HTTP, stored values, and the chain."""

from overnight_pipeline.providers.base import (
    FundamentalsResult,
    Health,
    Instrument,
    MarketDataProvider,
    PricesResult,
    ProviderError,
    Quote,
    RatesResult,
)
from overnight_pipeline.providers.factory import build_provider, provider_from_settings
from overnight_pipeline.providers.fallback import FallbackProvider

__all__ = [
    "FallbackProvider",
    "FundamentalsResult",
    "Health",
    "Instrument",
    "MarketDataProvider",
    "PricesResult",
    "ProviderError",
    "Quote",
    "RatesResult",
    "build_provider",
    "provider_from_settings",
]
