"""What the HTTP services answer, read into the provider's results (docs/PROVIDERS.md): a
body that is not JSON, a field that is missing or malformed, an item not asked for, a metric
not known, each a `ProviderError` naming the service, the field and the value. Pure functions
of the body; `http.HttpProvider` sends the requests."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar

import httpx

from overnight_pipeline.core.vocabulary import METRICS
from overnight_pipeline.providers import parsing
from overnight_pipeline.providers.base import (
    Instrument,
    ProviderError,
    Quote,
    RatesResult,
    label,
)

T = TypeVar("T")
_METRIC_SET = frozenset(METRICS)


@dataclass
class BatchOutcome:
    """What one batch request gave: the values found, the items refused, or a failure."""

    found: dict[Instrument, Any]
    errors: list[str]
    failure: ProviderError | None = None  # the batch got no usable answer at all


def json_body(service: str, what: str, response: httpx.Response, **kwargs: Any) -> Any:
    try:
        return json.loads(response.content, **kwargs)
    except (ValueError, UnicodeDecodeError):
        raise ProviderError(
            service, f"{what}: the body is not JSON", field="body", value=response.text[:120]
        ) from None


def parse_rates(
    name: str, source: str, body: Any, wanted: list[str], fetched: datetime
) -> RatesResult:
    """A Frankfurter v1 body: USD-based rates of the `wanted` currencies (per unit)."""
    if not isinstance(body, dict):
        raise ProviderError(name, "must be a JSON object", field="body", value=body)

    def field(key: str, parse: Callable[[Any], T]) -> T:
        if key not in body:
            raise ProviderError(name, "is missing", field=key)
        try:
            return parse(body[key])
        except ValueError as exc:
            raise ProviderError(name, str(exc), field=key) from None

    base = field("base", parsing.currency)
    if base != "USD":
        raise ProviderError(name, "must be USD (we ask for base=USD)", field="base", value=base)
    amount = field("amount", parsing.positive_decimal) if "amount" in body else Decimal(1)
    rate_date = field("date", parsing.iso_date)
    rates = body.get("rates")
    if not isinstance(rates, dict):
        raise ProviderError(name, "must be an object of currency: rate", field="rates")
    usd_to: dict[str, Decimal] = {}
    for currency in wanted:
        if currency not in rates:
            continue
        try:
            usd_to[currency] = parsing.positive_decimal(rates[currency]) / amount
        except ValueError as exc:
            raise ProviderError(name, str(exc), field=f"rates.{currency}") from None
    return RatesResult(
        usd_to=usd_to,
        source=source,
        as_of=fetched,
        rate_date=rate_date,
        missing=[c for c in wanted if c not in usd_to],
    )


def _items(name: str, payload: Any, key: str) -> list[Any]:
    if not isinstance(payload, dict):
        raise ProviderError(name, "must be a JSON object", field="body", value=payload)
    items = payload.get(key)
    if not isinstance(items, list):
        raise ProviderError(name, "must be a list", field=key, value=items)
    return items


def _item_instrument(
    name: str, item: Any, where: str, part: Sequence[Instrument], errors: list[str]
) -> Instrument | None:
    if not isinstance(item, dict):
        errors.append(str(ProviderError(name, "must be an object", field=where, value=item)))
        return None
    try:
        inst = (parsing.text(item.get("market")), parsing.text(item.get("symbol")))
    except ValueError as exc:
        errors.append(str(ProviderError(name, str(exc), field=f"{where}.market/symbol")))
        return None
    if inst not in part:
        errors.append(str(ProviderError(name, f"{label(inst)} was not asked for", field=where)))
        return None
    return inst


def parse_prices(
    name: str, payload: Any, part: Sequence[Instrument], fetched: datetime
) -> BatchOutcome:
    """A prices body of our contract: the quotes of `part`, and an error per bad item."""
    found: dict[Instrument, Any] = {}
    errors: list[str] = []
    for i, item in enumerate(_items(name, payload, "prices")):
        where = f"prices[{i}]"
        inst = _item_instrument(name, item, where, part, errors)
        if inst is None:
            continue
        try:
            key = "price"
            price = parsing.positive_decimal(item.get("price"), strings_only=True)
            key = "currency"
            currency = parsing.currency(item.get("currency"))
            key = "as_of"
            stamp = parsing.timestamp(item["as_of"]) if "as_of" in item else fetched
        except ValueError as exc:
            errors.append(str(ProviderError(name, str(exc), field=f"{where}.{key}")))
            continue
        found[inst] = Quote(price, currency, stamp)
    return BatchOutcome(found, errors)


def parse_fundamentals(name: str, payload: Any, part: Sequence[Instrument]) -> BatchOutcome:
    """A fundamentals body of our contract: every known metric of `part` (None when
    absent), and an error per bad item."""
    found: dict[Instrument, Any] = {}
    errors: list[str] = []
    for i, item in enumerate(_items(name, payload, "fundamentals")):
        where = f"fundamentals[{i}]"
        inst = _item_instrument(name, item, where, part, errors)
        if inst is None:
            continue
        metrics = item.get("metrics")
        if not isinstance(metrics, dict):
            errors.append(str(ProviderError(name, "must be an object", field=f"{where}.metrics")))
            continue
        values: dict[str, Decimal | None] = dict.fromkeys(METRICS)
        bad = False
        for metric, raw in metrics.items():
            field = f"{where}.metrics.{metric}"
            if metric not in _METRIC_SET:
                errors.append(str(ProviderError(name, "is not a known metric", field=field)))
                bad = True
                continue
            try:
                values[metric] = parsing.optional_decimal(raw, strings_only=True)
            except ValueError as exc:
                errors.append(str(ProviderError(name, str(exc), field=field)))
                bad = True
        if not bad:
            found[inst] = values
    return BatchOutcome(found, errors)
