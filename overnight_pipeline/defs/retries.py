"""Step retries whose first delay is a resource value, not an import-time constant.

A `RetryPolicy` fixes its delay when the module defining the asset is imported, so the delay
could only come from the environment of that import. Here a failed attempt raises Dagster's
own `RetryRequested` with the wait `RetryPolicy.calculate_delay` gives for the attempt
(exponential backoff, full jitter) from the `tuning` resource's `retry_delay_seconds`
(RETRY_DELAY_SECONDS; the launchpad shows it and a test binds a short one). Everything else
is what Dagster does with a `RetryPolicy` (`dagster._core.execution.plan.utils`): the same
request on every failed attempt, the last one failing the step with "Exceeded max_retries"
and the step's own error as its cause; an interrupt retried like an error; a `Failure` raised
with `allow_retries=False` (a run refused before any write) never retried.

    @asset(...)
    @retried(IO_RETRIES)
    def exchange_rates(context, database, tuning: OvernightTuning, ...) -> ...

The decorated function must take the `tuning` resource by that name.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from dagster import (
    Backoff,
    DagsterExecutionInterruptedError,
    Failure,
    Jitter,
    RetryPolicy,
    RetryRequested,
)

F = TypeVar("F", bound=Callable[..., Any])

# Provider calls and Redis: three retries; PostgreSQL steps: two, each resuming after the
# last committed batch.
IO_RETRIES = 3
DB_RETRIES = 2


_RETRIED = (Exception, DagsterExecutionInterruptedError, KeyboardInterrupt)


def _retry(context: Any, tuning: Any, max_retries: int, exc: BaseException) -> None:
    if isinstance(exc, Failure) and not exc.allow_retries:
        raise exc
    attempt = context.retry_number  # 0 on the first attempt
    policy = RetryPolicy(
        max_retries=max_retries,
        delay=tuning.retry_delay_seconds,
        backoff=Backoff.EXPONENTIAL,
        jitter=Jitter.FULL,
    )
    raise RetryRequested(
        max_retries=max_retries, seconds_to_wait=policy.calculate_delay(attempt + 1)
    ) from exc


def retried(max_retries: int) -> Callable[[F], F]:
    """Retry the decorated op or asset body up to `max_retries` times (see the module)."""

    def decorate(fn: F) -> F:
        if "tuning" not in inspect.signature(fn).parameters:
            raise TypeError(f"{fn.__name__}: a retried step takes the `tuning` resource")

        if inspect.isgeneratorfunction(fn):

            @functools.wraps(fn)
            def generator(context: Any, *args: Any, **kwargs: Any) -> Any:
                try:
                    yield from fn(context, *args, **kwargs)
                except RetryRequested:
                    raise
                except _RETRIED as exc:
                    _retry(context, kwargs["tuning"], max_retries, exc)

            return generator  # type: ignore[return-value]

        @functools.wraps(fn)
        def function(context: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(context, *args, **kwargs)
            except RetryRequested:
                raise
            except _RETRIED as exc:
                _retry(context, kwargs["tuning"], max_retries, exc)

        return function  # type: ignore[return-value]

    return decorate
