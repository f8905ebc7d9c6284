"""Stored results as the pipeline writes them (recommendation rows, calculation assets, both
cache documents) and the rows they refer to, for the dashboard and storage tests and the
dashboard benchmark.

The tests insert `recommendations` and `calculation_assets` rows themselves; the documents
come from the core (`recommend` + `cache_payloads`), dumped exactly as the pipeline's writer
does, so the API reads what it reads in production.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal

from sqlalchemy import Connection, insert
from sqlalchemy.dialects.postgresql import insert as pg_insert

from overnight_pipeline.core.money import FxRates
from overnight_pipeline.core.payloads import (
    CachedPortfolioSummary,
    CachedRecommendations,
    cache_payloads,
)
from overnight_pipeline.core.recommendations import ClassSpec, HoldingInput, recommend
from overnight_pipeline.core.scoring import AssetScore, RuleOutcome
from overnight_pipeline.storage.bulk import write_rows
from overnight_pipeline.storage.cache_entries import CacheEntry
from overnight_pipeline.storage.models import (
    asset_classes_table,
    assets_table,
    holdings_table,
    recommendations_table,
    users_table,
)
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.results import calculation_asset_rows

D = Decimal
FX = FxRates(usd_to={"BRL": D("5.0123"), "EUR": D("0.92"), "JPY": D("151.2")})
CLASSES = (
    ClassSpec("US Stocks", D("40"), D("60"), max_assets=12, min_allocation_value=D("10")),
    ClassSpec("Brazil", D("10"), D("30"), max_assets=8),
    ClassSpec("Bonds", D("20"), D("40")),
)


@dataclass(frozen=True)
class Planner:
    """One user's persisted result: the row's values and both documents."""

    user_id: uuid.UUID
    market_date: date
    generated_at: datetime
    contribution: Decimal
    recs: CachedRecommendations
    portfolio: CachedPortfolioSummary
    holdings: tuple[HoldingInput, ...] = ()

    def asset_class(self, asset_id: object) -> str:
        """The class of one of this planner's assets."""
        return next(h.asset_class for h in self.holdings if h.asset_id == str(asset_id))

    @property
    def recs_json(self) -> bytes:
        return self.recs.model_dump_json(by_alias=True).encode()

    @property
    def portfolio_json(self) -> bytes:
        return self.portfolio.model_dump_json(by_alias=True).encode()

    def cache_entry(self) -> CacheEntry:
        return CacheEntry(
            user_id=self.user_id,
            market_date=self.market_date,
            generated_at=self.generated_at,
            recs_json=self.recs_json,
            portfolio_json=self.portfolio_json,
            total_investable=self.contribution,
        )


def planner(
    user_id: uuid.UUID,
    *,
    generated_at: datetime,
    market_date: date | None = None,
    contribution: str = "20000.00",
    assets: int = 30,
    seed: int = 0,
) -> Planner:
    """A user with `assets` holdings over three classes, scored and recommended by the core."""
    holdings: list[HoldingInput] = []
    scores: dict[str, AssetScore] = {}
    for i in range(assets):
        cls = CLASSES[i % len(CLASSES)]
        asset_id = str(uuid.UUID(int=(seed * 1_000 + i + 1)))
        currency = "BRL" if cls.name == "Brazil" else "USD"
        holdings.append(
            HoldingInput(
                asset_id=asset_id,
                symbol=f"S{seed % 97:02d}{i:03d}",
                asset_class=cls.name,
                quantity=D(10 + (i * 7 + seed) % 90),
                currency=currency,
                price=D(f"{20 + (i * 13 + seed) % 180}.25"),
                price_as_of=generated_at,
            )
        )
        points = 5 + (i * 11 + seed) % 40
        scores[asset_id] = AssetScore(
            asset_id=asset_id,
            score=D(points).quantize(D("0.0001")),
            max_possible_score=D(60),
            top_contributor="dividend_yield",
            # What scoring reports for such a score: the rule that gave it, one that did not.
            breakdown=(
                RuleOutcome("dy", "dividend_yield", True, points, D("4.1"), None),
                RuleOutcome("pe", "pe_ratio", False, 0, D("31.5"), None),
            ),
        )
    result = recommend(
        base_currency="USD",
        contribution=D(contribution),
        classes=CLASSES,
        holdings=holdings,
        scores=scores,
        fx=FX,
        criteria_version=3,
    )
    recs, portfolio = cache_payloads(
        user_id, result, generated_at=generated_at, asset_count=len(holdings)
    )
    return Planner(
        user_id=user_id,
        market_date=market_date or generated_at.date(),
        generated_at=generated_at,
        contribution=D(contribution),
        recs=recs,
        portfolio=portfolio,
        holdings=tuple(holdings),
    )


def insert_holdings(conn: Connection, planners: Sequence[Planner]) -> None:
    """The assets, classes and holdings behind the planners' documents (users must exist)."""
    assets = {
        h.asset_id: {
            "id": uuid.UUID(h.asset_id),
            "market": "B3" if h.currency == "BRL" else "NYSE",
            "symbol": h.symbol,
            "currency": h.currency,
        }
        for p in planners
        for h in p.holdings
    }
    if not assets:
        return
    conn.execute(pg_insert(assets_table).on_conflict_do_nothing(), list(assets.values()))
    for p in planners:
        class_ids = {c.name: uuid.uuid4() for c in CLASSES}
        conn.execute(
            insert(asset_classes_table),
            [
                {
                    "id": class_ids[c.name],
                    "user_id": p.user_id,
                    "name": c.name,
                    "target_min": c.target_min,
                    "target_max": c.target_max,
                }
                for c in CLASSES
            ],
        )
        conn.execute(
            insert(holdings_table),
            [
                {
                    "user_id": p.user_id,
                    "asset_id": uuid.UUID(h.asset_id),
                    "asset_class_id": class_ids[h.asset_class],
                    "quantity": h.quantity,
                }
                for h in p.holdings
            ],
        )


def insert_users(conn: Connection, user_ids: Sequence[uuid.UUID]) -> None:
    conn.execute(
        insert(users_table),
        [{"id": u, "base_currency": "USD", "default_contribution": D("1000")} for u in user_ids],
    )


def persist(conn: Connection, planners: Sequence[Planner], *, market: str = "NYSE") -> None:
    """The `recommendations` rows the pipeline writes (users must exist)."""
    conn.execute(
        insert(recommendations_table),
        [
            {
                "user_id": p.user_id,
                "market_date": p.market_date,
                "market": market,
                "correlation_id": uuid.uuid4(),
                "generated_at": p.generated_at,
                "base_currency": "USD",
                "total_investable": p.contribution,
                "criteria_version": 3,
                "payload": p.recs.model_dump(mode="json", by_alias=True),
                "portfolio": p.portfolio.model_dump(mode="json", by_alias=True),
            }
            for p in planners
        ],
    )


def insert_asset(conn: Connection, market: str, symbol: str) -> uuid.UUID:
    asset_id = uuid.uuid4()
    conn.execute(
        insert(assets_table).values(id=asset_id, market=market, symbol=symbol, currency="USD")
    )
    return asset_id


def insert_calculation(
    conn: Connection,
    *,
    asset_id: uuid.UUID,
    user_id: uuid.UUID,
    score: str,
    calculated_at: datetime,
    correlation_id: uuid.UUID | None = None,
) -> uuid.UUID:
    correlation_id = correlation_id or uuid.uuid4()
    ensure_months(conn, [calculated_at])
    write_rows(
        conn,
        calculation_asset_rows(
            conn.dialect.name,
            [(str(asset_id), str(user_id), score)],
            correlation_id=correlation_id,
            calculated_at=calculated_at,
        ),
    )
    return correlation_id
