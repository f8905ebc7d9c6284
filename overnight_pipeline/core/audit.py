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
    return [
        (correlation_id, user_id, CALC_STARTED, started),
        (correlation_id, user_id, INPUTS_CAPTURED, captured),
        (correlation_id, user_id, SCORES_COMPUTED, scores),
        (correlation_id, user_id, CALC_COMPLETED, completed),
    ]


def unvalued_user_events(
    correlation_id: uuid.UUID, user_id: str, *, started: Any, completed: Any
) -> list[Event]:
    """The two events of a user whose inputs could not be valued (nothing was captured)."""
    return [
        (correlation_id, user_id, CALC_STARTED, started),
        (correlation_id, user_id, CALC_COMPLETED, completed),
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
