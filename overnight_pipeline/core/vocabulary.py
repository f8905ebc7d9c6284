"""Closed vocabularies of the domain (BEHAVIOUR §1): metrics, operators, alerts. The audit
vocabulary (event types, job-run statuses) is `core.audit`."""

from __future__ import annotations

from typing import Final, Literal, get_args

# Each vocabulary is said once, as the Literal type checkers read; its tuple is derived in
# the same order (the order of the fundamentals' columns and of the scoring tables).
Metric = Literal[
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
]
METRICS: Final[tuple[str, ...]] = get_args(Metric)

# How people read the metrics (the dashboard page, reports).
METRIC_LABELS: Final[dict[str, str]] = {
    "dividend_yield": "Dividend yield",
    "pe_ratio": "P/E ratio",
    "pb_ratio": "P/B ratio",
    "market_cap": "Market capitalisation",
    "revenue": "Revenue",
    "earnings": "Earnings",
    "surplus_years": "Years in surplus",
    "roe": "Return on equity",
    "roa": "Return on assets",
    "debt_to_equity": "Debt to equity",
    "current_ratio": "Current ratio",
    "gross_margin": "Gross margin",
    "net_margin": "Net margin",
    "payout_ratio": "Payout ratio",
    "ev_ebitda": "EV/EBITDA",
}

Operator = Literal["gt", "lt", "gte", "lte", "between", "equals", "exists"]
OPERATORS: Final[tuple[str, ...]] = get_args(Operator)

# Alerts (BEHAVIOUR §9): what went wrong for a market-date, and where its delivery stands.
ALERT_KINDS: Final[tuple[str, ...]] = (
    "deadline_missed",
    "run_failed",
    "partial_over_limit",
    "replay_mismatch",
)
ALERT_STATUSES: Final[tuple[str, ...]] = ("pending", "sending", "sent", "failed", "abandoned")

POINTS_MIN: Final = -100
POINTS_MAX: Final = 100
