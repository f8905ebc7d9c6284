"""Closed vocabularies of the domain (SPEC §1): metrics, operators, event types."""

from __future__ import annotations

from typing import Final, Literal

METRICS: Final[tuple[str, ...]] = (
    "dividend_yield",
    "pe_ratio",
    "pb_ratio",
    "market_cap",
    "revenue",
    "earnings",
    "surplus_years",
    "roe",
    "roa",
    "debt_to_equity",
    "current_ratio",
    "gross_margin",
    "net_margin",
    "payout_ratio",
    "ev_ebitda",
)

Operator = Literal["gt", "lt", "gte", "lte", "between", "equals", "exists"]
OPERATORS: Final[tuple[str, ...]] = ("gt", "lt", "gte", "lte", "between", "equals", "exists")

EVENT_TYPES: Final[tuple[str, ...]] = (
    "CALC_STARTED",
    "INPUTS_CAPTURED",
    "SCORES_COMPUTED",
    "CALC_COMPLETED",
)

JOB_STATUSES: Final[tuple[str, ...]] = ("started", "completed", "failed", "partial")

POINTS_MIN: Final = -100
POINTS_MAX: Final = 100
