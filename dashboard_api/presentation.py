"""What the dashboard page shows, formatted for its reader: numbers, money, percentages and
times by Babel (CLDR) in the locale the browser asks for (`Accept-Language`), amounts in the
user's base currency, metrics by their human names. The page's words are English; the
numbers follow the reader's conventions (`1.234,50 R$`, `45,2 %`).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from babel import Locale, UnknownLocaleError
from babel.dates import format_datetime, format_timedelta
from babel.numbers import format_currency, format_decimal, format_percent

from overnight_pipeline.core.payloads import CachedPortfolioSummary, CachedRecommendations
from overnight_pipeline.core.vocabulary import METRIC_LABELS

DEFAULT_LOCALE = Locale("en", "US")
MAX_LANGUAGES = 12  # of an Accept-Language header; the rest is ignored


def reader_locale(accept_language: str | None) -> Locale:
    """The first locale of `Accept-Language` (by q-value) that CLDR knows; en-US otherwise."""
    ranked: list[tuple[float, int, str]] = []
    for n, part in enumerate((accept_language or "").split(",")[:MAX_LANGUAGES]):
        tag, _, params = part.strip().partition(";")
        quality = 1.0
        if params.strip().startswith("q="):
            try:
                quality = float(params.strip()[2:])
            except ValueError:
                continue
        if tag and tag != "*" and quality > 0:
            ranked.append((-quality, n, tag.strip()))
    for _, _, tag in sorted(ranked):
        try:
            return Locale.parse(tag, sep="-")
        except (ValueError, TypeError, UnknownLocaleError):
            continue
    return DEFAULT_LOCALE


def metric_label(metric: str | None) -> str:
    """`current_ratio` → "Current ratio"; a metric this server does not know, in words."""
    if not metric:
        return "—"
    return METRIC_LABELS.get(metric) or metric.replace("_", " ").capitalize()


@dataclass(frozen=True)
class RecommendationRow:
    symbol: str
    asset_class: str
    amount: str
    score: str
    class_gap: str
    criteria: str
    top_contributor: str


@dataclass(frozen=True)
class ClassBar:
    name: str
    current: str  # "45.2%"
    band: str  # "40%–60%"
    where: str  # "below" | "within" | "above"
    status: str  # in words, for people who cannot tell the colours apart
    bar_width: float  # CSS percentages of the track
    band_left: float
    band_width: float


@dataclass(frozen=True)
class Page:
    """The dashboard's figures as the template shows them."""

    locale: Locale
    total_investable: str
    rows: list[RecommendationRow]
    bars: list[ClassBar]
    portfolio_value: str | None
    asset_count: int
    computed_at: str | None


class Formatter:
    def __init__(self, locale: Locale) -> None:
        self.locale = locale

    def money(self, amount: Decimal | str, currency: str) -> str:
        return format_currency(Decimal(amount), currency, locale=self.locale)

    def number(self, value: Decimal | str) -> str:
        """A score: as many decimals as it has, at most two (`50`, `12.5`)."""
        return format_decimal(Decimal(value), format="#,##0.##", locale=self.locale)

    def points(self, value: Decimal | str) -> str:
        """Percentage points with their sign (`+4.5 pp`)."""
        signed = format_decimal(Decimal(value), format="+#,##0.##;-#,##0.##", locale=self.locale)
        return f"{signed} pp"

    def percent(self, value: Decimal | str) -> str:
        """A share given in percent (`45.23` → `45.2%`), one decimal at most."""
        share = (Decimal(value) / 100).quantize(Decimal("0.001"))
        return format_percent(share, locale=self.locale, decimal_quantization=False)

    def when(self, moment: datetime) -> str:
        return format_datetime(moment, format="medium", tzinfo=moment.tzinfo, locale=self.locale)


def ago(delta: timedelta) -> str:
    """'3 hours ago' (hours up to two days, then days), in the page's language."""
    if delta < timedelta(minutes=1):
        return "just now"
    # The largest unit that reaches 1, except that the second day still counts in hours.
    threshold = 2 if timedelta(days=1) <= delta < timedelta(days=2) else 1
    return format_timedelta(-delta, add_direction=True, threshold=threshold, locale="en")


def contribution_words(amount: Decimal, currency: str, fmt: Formatter) -> str:
    """The contribution to invest; without a currency (no such user yet), in words."""
    if not currency:
        return "No contribution set yet"
    return fmt.money(amount, currency)


def build_page(
    *,
    locale: Locale,
    total_investable: str,
    base_currency: str,
    recs: CachedRecommendations | None,
    portfolio: CachedPortfolioSummary | None,
    classes: Mapping[uuid.UUID, str],
) -> Page:
    fmt = Formatter(locale)
    rows = [
        RecommendationRow(
            symbol=r.symbol,
            asset_class=classes.get(uuid.UUID(str(r.asset_id)), "Unknown class"),
            amount=fmt.money(r.amount, r.currency),
            score=fmt.number(r.score),
            class_gap=fmt.points(r.allocation_gap),
            criteria=format_decimal(r.breakdown.criteria_count, locale=locale),
            top_contributor=metric_label(r.breakdown.top_contributor),
        )
        for r in (recs.recommendations if recs else [])
    ]
    bars = []
    for a in portfolio.allocations if portfolio else []:
        cur, lo, hi = Decimal(a.current_percent), Decimal(a.target_min), Decimal(a.target_max)
        where = "below" if cur < lo else "above" if cur > hi else "within"
        bars.append(
            ClassBar(
                name=a.class_name,
                current=fmt.percent(cur),
                band=f"{fmt.percent(lo)}–{fmt.percent(hi)}",
                where=where,
                status={"below": "below target", "above": "above target"}.get(where, "on target"),
                bar_width=float(min(cur, Decimal(100))),
                band_left=float(lo),
                band_width=float(hi - lo),
            )
        )
    return Page(
        locale=locale,
        total_investable=contribution_words(Decimal(total_investable), base_currency, fmt),
        rows=rows,
        bars=bars,
        portfolio_value=fmt.money(portfolio.total_value, base_currency)
        if portfolio and base_currency
        else None,
        asset_count=portfolio.asset_count if portfolio else 0,
        computed_at=fmt.when(recs.generated_at) if recs else None,
    )
