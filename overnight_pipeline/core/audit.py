"""The audit vocabulary (BEHAVIOUR §4, §9; docs/EVENTS.md): the four events of a user's
calculation, the payloads of `CALC_STARTED` and `CALC_COMPLETED`, the correlation id that ties
a calculation's events together, and the statuses of a job run with the rule that decides a
finished run's.

The other two payloads are built a batch at a time where their data is: `INPUTS_CAPTURED` by
`core.captured_writer.capture_json`, `SCORES_COMPUTED` by `core.scored.score_json` (`no_scores` for
a user without holdings). This module imports neither, so the storage models and the
dashboard can read its vocabulary without pandas.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection
from datetime import date
from typing import TYPE_CHECKING, Any, Final

import orjson

if TYPE_CHECKING:
    from overnight_pipeline.core.recommendations import UserRecommendations

CALC_STARTED: Final = "CALC_STARTED"
INPUTS_CAPTURED: Final = "INPUTS_CAPTURED"
SCORES_COMPUTED: Final = "SCORES_COMPUTED"
CALC_COMPLETED: Final = "CALC_COMPLETED"
EVENT_TYPES: Final[tuple[str, ...]] = (
    CALC_STARTED,
    INPUTS_CAPTURED,
    SCORES_COMPUTED,
    CALC_COMPLETED,
)

Event = tuple[uuid.UUID, str, str, Any]
"""One `calculation_events` row to write: correlation id, user id, event type, payload (a
document, or its JSON text)."""


def correlation_id_for(calculation: str) -> uuid.UUID:
    """The correlation id of the calculation named `calculation` (`run_correlation_id`
    names them): the same text always gives the same id."""
    return uuid.uuid5(uuid.NAMESPACE_URL, f"overnight-run:{calculation}")


def run_correlation_id(root_run_id: str, scope: str) -> uuid.UUID:
    """The correlation id of one calculation of a run: `scope` is a partition key
    (`2026-11-30|NYSE`) or `recalculation`. A run's retries and re-executions share its root
    run id, so they resume the same calculation instead of starting another (BEHAVIOUR §4)."""
    return correlation_id_for(f"{root_run_id}:{scope}")


def calc_started(
    *,
    market: str,
    day: date,
    run_id: str,
    criteria_version: int | None,
    holdings: int | None = None,
) -> dict[str, Any]:
    """The `CALC_STARTED` payload of a user; `holdings` (the count) is left out for a user
    whose inputs could not be valued."""
    payload: dict[str, Any] = {
        "market": market,
        "marketDate": day.isoformat(),
        "runId": run_id,
        "criteriaVersion": criteria_version,
    }
    if holdings is not None:
        payload["holdings"] = holdings
    return payload


def calc_completed(rec: UserRecommendations, *, market: str, day: date) -> dict[str, Any]:
    """The `CALC_COMPLETED` payload of a user's successful calculation."""
    return {
        "status": "completed",
        "market": market,
        "marketDate": day.isoformat(),
        "recommendations": len(rec.recommendations),
        "allocated": format(rec.allocated, "f"),
        "unallocated": format(rec.unallocated, "f"),
        "contribution": format(rec.contribution, "f"),
        "baseCurrency": rec.base_currency,
        "missingPrices": list(rec.missing_prices),
        "classes": {c.name: c.status for c in rec.classes if c.status},
    }


def calc_failed(*, market: str, day: date, stage: str, error: str) -> dict[str, Any]:
    """The failed `CALC_COMPLETED` payload of a user: `stage` is `inputs` (not valued) or
    `recommendations`."""
    return {
        "status": "failed",
        "stage": stage,
        "error": error,
        "market": market,
        "marketDate": day.isoformat(),
    }


class PayloadTexts:
    """The JSON text of the `CALC_STARTED` and `CALC_COMPLETED` payloads of one
    calculation's users (one market, day and run): the bytes `orjson.dumps` writes of
    `calc_started`'s, `calc_completed`'s and `calc_failed`'s documents (the same keys in the
    same order, compact), with what every user's shares made once instead of a dict per
    user (`steps.batch_results`)."""

    def __init__(self, *, market: str, day: date, run_id: str) -> None:
        self.market, self.day = market, day
        where = _dumps({"market": market, "marketDate": day.isoformat()})[1:-1]
        self._started = f'{{{where},"runId":{_dumps(run_id)},"criteriaVersion":'
        self._completed = f'{{"status":"completed",{where},"recommendations":'
        self._texts: dict[Any, str] = {}

    def started(self, criteria_version: int | None, holdings: int | None = None) -> str:
        """`calc_started` of a user as text (`holdings`, an int, left out when None)."""
        version = _dumps(criteria_version)
        if holdings is None:
            return f"{self._started}{version}}}"
        return f'{self._started}{version},"holdings":{holdings:d}}}'

    def completed(self, rec: UserRecommendations) -> str:
        """`calc_completed` of a user as text."""
        base = self._texts.get(rec.base_currency)
        if base is None:
            base = self._texts[rec.base_currency] = _dumps(rec.base_currency)
        classes = {c.name: c.status for c in rec.classes if c.status}
        return (
            f'{self._completed}{len(rec.recommendations)},"allocated":"{rec.allocated:f}",'
            f'"unallocated":"{rec.unallocated:f}","contribution":"{rec.contribution:f}",'
            f'"baseCurrency":{base},'
            f'"missingPrices":{_dumps(list(rec.missing_prices)) if rec.missing_prices else "[]"},'
            f'"classes":{_dumps(classes) if classes else "{}"}}}'
        )

    def failed(self, *, stage: str, error: str) -> str:
        """`calc_failed` of a user as text."""
        return _dumps(calc_failed(market=self.market, day=self.day, stage=stage, error=error))


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


VALUED_EVENTS: Final = EVENT_TYPES
"""The events of a user whose inputs were captured, in their order."""
UNVALUED_EVENTS: Final = (CALC_STARTED, CALC_COMPLETED)
"""The events of a user whose inputs could not be valued (nothing was captured)."""


def user_events(
    correlation_id: uuid.UUID,
    user_id: str,
    *,
    started: Any,
    captured: Any,
    scores: Any,
    completed: Any,
) -> list[Event]:
    """The four events of a user whose inputs were captured, in their order."""
    payloads = (started, captured, scores, completed)
    return [
        (correlation_id, user_id, kind, p) for kind, p in zip(VALUED_EVENTS, payloads, strict=True)
    ]


def unvalued_user_events(
    correlation_id: uuid.UUID, user_id: str, *, started: Any, completed: Any
) -> list[Event]:
    """The two events of a user whose inputs could not be valued (nothing was captured)."""
    payloads = (started, completed)
    return [
        (correlation_id, user_id, kind, p)
        for kind, p in zip(UNVALUED_EVENTS, payloads, strict=True)
    ]


# Job runs: `overnight_job_runs.status` -----------------------------------------------------

STARTED: Final = "started"
COMPLETED: Final = "completed"
PARTIAL: Final = "partial"
FAILED: Final = "failed"
JOB_STATUSES: Final[tuple[str, ...]] = (STARTED, COMPLETED, FAILED, PARTIAL)
FINISHED: Final[tuple[str, ...]] = (COMPLETED, PARTIAL, FAILED)


def decide_status(
    *,
    succeeded: bool,
    failed_steps: Collection[str],
    users_failed: int,
    prices_missing: int = 0,
    cache_step: str,
) -> str:
    """The job-run status of a finished run.

    `partial`: the run did its work for the partition but not all of it: some users failed
    (events + counts), some held assets had no price (BEHAVIOUR §7), or only the cache step
    (`cache_step`) failed (the recommendations are persisted; the dashboard serves them from
    PostgreSQL). `failed`: any other step failed, or the run was canceled.
    """
    if not succeeded:
        only_cache = bool(failed_steps) and set(failed_steps) <= {cache_step}
        return PARTIAL if only_cache else FAILED
    return PARTIAL if users_failed or prices_missing else COMPLETED
