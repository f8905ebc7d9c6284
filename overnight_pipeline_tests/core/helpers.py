"""Small builders for core tests."""

from __future__ import annotations

from decimal import Decimal

from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.recommendations import ClassSpec, HoldingInput, recommend
from overnight_pipeline.core.scoring import AssetScore

D = Decimal
USD_ONLY = FxRates(usd_to={"BRL": D("5"), "JPY": D("150"), "EUR": D("0.8")})


def score(asset_id: str, value: int | str) -> AssetScore:
    return AssetScore(
        asset_id=asset_id,
        score=D(value).quantize(D("0.0001")),
        max_possible_score=D(100),
        top_contributor=None,
    )


def holding(
    symbol: str, cls: str, value: str | int, currency: str = "USD", price: str | None = "1"
) -> HoldingInput:
    """A holding worth `value` (quantity `value` at price 1 unless told)."""
    return HoldingInput(
        asset_id=symbol,
        symbol=symbol,
        asset_class=cls,
        quantity=D(value),
        currency=currency,
        price=None if price is None else D(price),
    )


def band(name: str, lo: int | str, hi: int | str, **kw) -> ClassSpec:
    return ClassSpec(name=name, target_min=D(lo), target_max=D(hi), **kw)


def run(classes, holdings, scores, contribution="1000", base="USD", fx=USD_ONLY):
    return recommend(
        base_currency=base,
        contribution=None if contribution is None else D(contribution),
        classes=classes,
        holdings=holdings,
        scores={s.asset_id: s for s in scores},
        fx=fx,
    )


def amounts(result) -> dict[str, Decimal]:
    return {r.symbol: r.amount for r in result.recommendations}


def by_class(result) -> dict[str, Decimal]:
    return {c.name: c.amount for c in result.classes}
