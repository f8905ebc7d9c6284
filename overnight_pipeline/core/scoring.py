"""Criteria documents and scoring (BEHAVIOUR §1 "Criteria", §2)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

from overnight_pipeline.core.money import DecimalString, parse_decimal
from overnight_pipeline.core.vocabulary import METRICS, POINTS_MAX, POINTS_MIN, Metric, Operator

SCORE_PLACES = Decimal("0.0001")
MISSING_FUNDAMENTAL = "missing_fundamental"


class Rule(BaseModel):
    """One criterion: when `metric` of a holding of `asset_class` satisfies it, award `points`."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )

    id: str = Field(min_length=1, max_length=64)
    asset_class: str = Field(min_length=1, max_length=100)
    metric: Metric
    operator: Operator
    value: DecimalString | None = None
    value2: DecimalString | None = None
    points: int = Field(strict=True, ge=POINTS_MIN, le=POINTS_MAX)

    @model_validator(mode="after")
    def _operands(self) -> Rule:
        if self.operator != "exists" and self.value is None:
            raise ValueError(f"operator '{self.operator}' needs a value")
        if self.operator == "between":
            if self.value2 is None:
                raise ValueError("operator 'between' needs value2 (the inclusive upper bound)")
            assert self.value is not None
            if self.value > self.value2:
                raise ValueError(
                    f"between needs value <= value2, got value={self.value} value2={self.value2}"
                )
        elif self.value2 is not None:
            raise ValueError(f"value2 only applies to 'between', not '{self.operator}'")
        return self

    def matches(self, actual: Decimal) -> bool:
        value = self.value
        assert value is not None or self.operator == "exists"
        match self.operator:
            case "exists":
                return True
            case "gt":
                return actual > value  # type: ignore[operator]
            case "lt":
                return actual < value  # type: ignore[operator]
            case "gte":
                return actual >= value  # type: ignore[operator]
            case "lte":
                return actual <= value  # type: ignore[operator]
            case "equals":
                # Decimal equality is numeric: 3.10 == 3.1.
                return actual == value
            case "between":
                return value <= actual <= self.value2  # type: ignore[operator]
        raise AssertionError(self.operator)


_RULES = TypeAdapter(list[Rule])


class CriteriaError(ValueError):
    """A criteria document is invalid; `errors` lists every problem as (path, message, value)."""

    def __init__(self, errors: list[tuple[str, str, Any]]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{p}: {m} (got {v!r})" for p, m, v in errors))


def validate_criteria(
    document: Sequence[Mapping[str, Any]], *, path: str = "criteria"
) -> list[Rule]:
    """Parse a criteria document, reporting every invalid rule and duplicate id at once."""
    errors: list[tuple[str, str, Any]] = []
    try:
        rules = _RULES.validate_python(list(document))
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            errors.append((f"{path}.{loc}" if loc else path, err["msg"], err.get("input")))
        rules = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(document):
        rule_id = raw.get("id") if isinstance(raw, Mapping) else None
        if isinstance(rule_id, str):
            if rule_id in seen:
                errors.append(
                    (f"{path}.{index}.id", f"duplicate rule id (first at {seen[rule_id]})", rule_id)
                )
            seen.setdefault(rule_id, index)
    if errors:
        raise CriteriaError(errors)
    return rules


def rules_document(rules: Iterable[Rule]) -> list[dict[str, Any]]:
    """The JSON form of rules (camelCase, decimals as strings), as events store it."""
    return [r.model_dump(mode="json", by_alias=True, exclude_none=True) for r in rules]


@dataclass(frozen=True)
class RuleOutcome:
    criterion_id: str
    metric: str
    matched: bool
    points_awarded: int
    actual_value: Decimal | None
    skipped_reason: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "criterionId": self.criterion_id,
            "matched": self.matched,
            "pointsAwarded": self.points_awarded,
            "actualValue": None if self.actual_value is None else format(self.actual_value, "f"),
            "skippedReason": self.skipped_reason,
        }


@dataclass(frozen=True)
class AssetScore:
    """The score of one held asset against the user's rules for its class."""

    asset_id: str
    score: Decimal
    max_possible_score: Decimal
    top_contributor: str | None
    breakdown: tuple[RuleOutcome, ...] = field(default=())

    @property
    def criteria_count(self) -> int:
        return len(self.breakdown)

    def to_json(self) -> dict[str, Any]:
        return {
            "assetId": self.asset_id,
            "score": format(self.score, "f"),
            "maxPossibleScore": format(self.max_possible_score, "f"),
            "criteriaCount": self.criteria_count,
            "topContributor": self.top_contributor,
            "breakdown": [o.to_json() for o in self.breakdown],
        }


Fundamentals = Mapping[str, Decimal | None]


def rules_by_class(rules: Iterable[Rule]) -> dict[str, list[Rule]]:
    grouped: dict[str, list[Rule]] = {}
    for rule in rules:
        grouped.setdefault(rule.asset_class, []).append(rule)
    return grouped


def score_asset(asset_id: str, rules: Sequence[Rule], fundamentals: Fundamentals) -> AssetScore:
    """Score one asset with the rules that apply to its class (document order kept)."""
    outcomes: list[RuleOutcome] = []
    total = 0
    best: tuple[int, str] | None = None
    for rule in rules:
        actual = fundamentals.get(rule.metric)
        if actual is None and rule.operator != "exists":
            outcomes.append(RuleOutcome(rule.id, rule.metric, False, 0, None, MISSING_FUNDAMENTAL))
            continue
        matched = actual is not None and rule.matches(actual)
        awarded = rule.points if matched else 0
        total += awarded
        if matched and (best is None or rule.points > best[0]):
            best = (rule.points, rule.metric)
        outcomes.append(RuleOutcome(rule.id, rule.metric, matched, awarded, actual, None))
    return AssetScore(
        asset_id=asset_id,
        score=Decimal(total).quantize(SCORE_PLACES),
        max_possible_score=Decimal(sum(r.points for r in rules if r.points > 0)).quantize(
            SCORE_PLACES
        ),
        top_contributor=None if best is None else best[1],
        breakdown=tuple(outcomes),
    )


def score_holdings(
    holdings: Iterable[tuple[str, str]],
    rules: Sequence[Rule],
    fundamentals: Mapping[str, Fundamentals],
) -> dict[str, AssetScore]:
    """Scores of `(asset_id, asset_class)` holdings; missing fundamentals skip their rules."""
    grouped = rules_by_class(rules)
    return {
        asset_id: score_asset(
            asset_id, grouped.get(asset_class, []), fundamentals.get(asset_id, {})
        )
        for asset_id, asset_class in holdings
    }


def fundamentals_from_json(raw: Mapping[str, Any]) -> dict[str, Decimal | None]:
    return {
        metric: None if raw.get(metric) is None else parse_decimal(raw[metric], field_name=metric)
        for metric in METRICS
    }


def replay(
    inputs_captured: Mapping[str, Any],
    snapshot: Mapping[str, Any] | None = None,
    criteria: Mapping[str, Any] | None = None,
) -> dict[str, AssetScore]:
    """Recompute the scores of a calculation from its `INPUTS_CAPTURED` payload and, for a
    payload of format 2 or 3, the market snapshot it references (`calculation_snapshots`)
    and, format 3, its criteria snapshot."""
    found = inputs_captured["criteria"].get("rules")
    if found is None:
        if criteria is None:
            raise ValueError(
                f"replay needs the criteria snapshot {inputs_captured['criteria']['snapshot']}"
            )
        found = criteria["rules"]
    rules = validate_criteria(found)
    if inputs_captured.get("format") in (2, 3):
        if snapshot is None:
            raise ValueError(f"replay needs the snapshot {inputs_captured['snapshot']}")
        columns = snapshot["fundamentals"]["columns"]
        fundamentals = {
            row[0]: fundamentals_from_json(dict(zip(columns[1:], row[1:], strict=True)))
            for row in snapshot["fundamentals"]["rows"]
        }
        holdings = [(aid, cls) for aid, cls, _ in inputs_captured["holdings"]["rows"]]
        return score_holdings(holdings, rules, fundamentals)
    fundamentals = {
        asset_id: fundamentals_from_json(values)
        for asset_id, values in inputs_captured["fundamentals"].items()
    }
    holdings = [(h["assetId"], h["assetClass"]) for h in inputs_captured["holdings"]]
    return score_holdings(holdings, rules, fundamentals)
