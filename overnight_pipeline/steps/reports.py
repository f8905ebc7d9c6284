"""What each step reports: one frozen dataclass per step, whose fields are the measures its
asset's metadata shows (`to_metadata`) and the run ledger reads back from the event log
(`from_metadata`), beside the step's failed users and its time.

A measure is a field, so a renamed one is a type error where it is read, and metadata
without it (or with a value of another type) fails loudly in `from_metadata` instead of
reading as 0.
"""

from __future__ import annotations

import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar, Self, TypeVar, Union, get_args, get_origin, get_type_hints

Failure = dict[str, str]
"""A failed user (or provider error) of a step: `user`, `stage`, `error`."""
ReportT = TypeVar("ReportT", bound="StepReport")


class MetadataError(ValueError):
    """A step's metadata does not hold the measures of its report."""


@dataclass(frozen=True, kw_only=True)
class StepReport:
    """What a step did, for the asset's metadata and the run's summary: the subclass's fields
    are the step's measures, in the order the metadata shows them."""

    failures: tuple[Failure, ...] = ()
    seconds: float = 0.0
    _COMMON: ClassVar[frozenset[str]] = frozenset({"failures", "seconds"})

    def measures(self) -> dict[str, Any]:
        """The measures by name, None where unknown (what the step's log line shows)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in self._COMMON}

    def to_metadata(self) -> dict[str, Any]:
        """The measures as materialization metadata: those that are known."""
        return {k: v for k, v in self.measures().items() if v is not None}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> Self:
        """The measures of metadata written by `to_metadata` (other entries are ignored; the
        failures and the time are not read back). Raises `MetadataError` when a measure is
        missing or has another type."""
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name in cls._COMMON:
                continue
            kinds, optional = _kinds(hints[f.name])
            value = metadata.get(f.name)
            if value is None and not optional:
                raise MetadataError(
                    f"{cls.__name__}: the metadata has no {f.name!r} "
                    f"(it has {', '.join(sorted(metadata)) or 'nothing'})"
                )
            if value is not None and not _is(value, kinds):
                raise MetadataError(
                    f"{cls.__name__}: {f.name!r} is {value!r}, not {' or '.join(kinds)}"
                )
            values[f.name] = float(value) if value is not None and kinds == ("float",) else value
        return cls(**values)

    @classmethod
    def combine(cls, reports: Sequence[Self]) -> Self:
        """The reports of the run's partitions as one: each number summed, each flag or-ed,
        each text (or unknown) the first one's; the failures of all, the times summed."""
        if not reports:
            raise ValueError(f"{cls.__name__}: no reports to combine")
        totals: dict[str, Any] = {}
        for report in reports:
            for name, value in report.measures().items():
                if isinstance(value, bool):
                    totals[name] = totals.get(name, False) or value
                elif isinstance(value, int | float):
                    totals[name] = totals.get(name, 0) + value
                else:
                    totals.setdefault(name, value)
        return cls(
            **totals,
            failures=tuple(f for r in reports for f in r.failures),
            seconds=sum(r.seconds for r in reports),
        )

    def markdown(self) -> str:
        rows = "\n".join(f"| {k} | {v} |" for k, v in self.measures().items() if v is not None)
        text = f"| measure | value |\n| --- | --- |\n{rows}\n| seconds | {self.seconds:.2f} |"
        if self.failures:
            text += "\n\n| user | stage | error |\n| --- | --- | --- |\n" + "\n".join(
                f"| {f['user']} | {f['stage']} | {f['error'][:200]} |" for f in self.failures[:20]
            )
        return text


def _kinds(hint: Any) -> tuple[tuple[str, ...], bool]:
    """The type names a measure accepts, and whether it may be unknown (None)."""
    args = get_args(hint) if get_origin(hint) in (Union, types.UnionType) else (hint,)
    kinds = tuple(a.__name__ for a in args if a is not type(None))
    return kinds, len(kinds) < len(args)


def _is(value: Any, kinds: tuple[str, ...]) -> bool:
    if isinstance(value, bool):
        return "bool" in kinds
    if isinstance(value, int):
        return "int" in kinds or "float" in kinds
    return type(value).__name__ in kinds


@dataclass(frozen=True, kw_only=True)
class RatesReport(StepReport):
    """`fetch_rates`: one USD-quoted snapshot for the partition's currencies."""

    users: int
    currencies: int
    stored: int
    source: str
    stale: bool
    stale_currencies: str  # comma-separated, or "-"
    stale_age_hours: float | None
    missing: str  # comma-separated, or "-"


@dataclass(frozen=True, kw_only=True)
class PricesReport(StepReport):
    """`fetch_prices`: a price for every distinct asset the partition's users hold."""

    users: int
    assets: int
    priced: int
    stored: int
    stale: int
    missing: int
    source: str


@dataclass(frozen=True, kw_only=True)
class FundamentalsReport(StepReport):
    """`fetch_fundamentals`: fundamentals for every distinct asset the users hold."""

    users: int
    assets: int
    fetched: int
    stored: int
    stale: int
    missing: int
    source: str


@dataclass(frozen=True, kw_only=True)
class CalculationReport(StepReport):
    """`score_and_recommend`: one shard's users (or a recalculation's) and what they got."""

    users_total: int
    users_resumed: int
    users_succeeded: int
    users_failed: int
    assets_scored: int
    recommendations_generated: int
    unallocated_users: int
    rates_stale: bool
    stale_prices: int
    tables_analyzed: str  # comma-separated, or "-"
    # The shard's entries written to Redis as its batches committed (`ShardCache`); the cache
    # step writes what they did not.
    cached: int = 0
    cache_kept_newer: int = 0
    cache_skipped: int = 0


@dataclass(frozen=True, kw_only=True)
class CacheReport(StepReport):
    """`warm_cache`: the calculation's recommendations written to Redis."""

    users: int
    written: int  # the run's entries in Redis: found as the shards wrote them, or written here
    kept_newer: int
    ttl_hours: float
    refilled: int = 0  # of `written` and `kept_newer`, those this step wrote (or tried to)


def combined(reports: Sequence[ReportT]) -> ReportT:
    """`StepReport.combine` of reports of one kind."""
    if not reports:
        raise ValueError("no reports to combine")
    return type(reports[0]).combine(reports)
