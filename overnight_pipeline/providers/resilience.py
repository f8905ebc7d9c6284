"""Retries with backoff, Retry-After and circuit breakers: the knobs and the policies.

The breaker is pybreaker's (thread-safe state, listeners, excluded exceptions), with one
policy added on top (`OneProbe`): half-open lets a single probe out at a time. The retry
loop that uses these knobs is tenacity's (`providers.http`). The dashboard's Redis breaker is
built by the same `circuit_breaker`.
"""

from __future__ import annotations

import contextlib
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import Enum
from typing import Any

import pybreaker

from overnight_pipeline.providers.base import ProviderError

_JITTER = random.Random()


@dataclass(frozen=True)
class HttpOptions:
    """Knobs of the HTTP providers; defaults suit a vendor API, tests shrink the times."""

    timeout: float = 10.0  # seconds per request (read/write/pool)
    connect_timeout: float = 5.0
    max_retries: int = 3  # retries after the first attempt: at most 4 requests per call
    backoff_base: float = 0.5  # first retry waits 0.25–0.5 s, then doubling ("equal jitter")
    backoff_max: float = 8.0
    retry_after_max: float = 60.0  # a longer Retry-After gives up instead of waiting
    rate_limit: float = 20.0  # requests per second per service, retries included
    concurrency: int = 4  # batches in flight at once per call
    breaker_threshold: int = 5  # consecutive failed requests that open the circuit
    breaker_cooldown: float = 30.0  # seconds open before one probe is let through

    def __post_init__(self) -> None:
        for name in ("timeout", "connect_timeout", "rate_limit", "breaker_cooldown"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HttpOptions.{name} must be positive, got {getattr(self, name)}")
        for name in ("max_retries", "backoff_base", "backoff_max", "retry_after_max"):
            if getattr(self, name) < 0:
                raise ValueError(f"HttpOptions.{name} must be >= 0, got {getattr(self, name)}")
        if self.concurrency < 1 or self.breaker_threshold < 1:
            raise ValueError("HttpOptions.concurrency and breaker_threshold must be >= 1")

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number `attempt + 1`: half the exponential step fixed, half
        random, so clients that failed together do not retry together."""
        step = min(self.backoff_max, self.backoff_base * 2.0**attempt)
        return step / 2 + (rng or _JITTER).uniform(0, step / 2)


def retry_after_seconds(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date), or None."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class BreakerState(Enum):
    CLOSED = pybreaker.STATE_CLOSED
    OPEN = pybreaker.STATE_OPEN
    HALF_OPEN = pybreaker.STATE_HALF_OPEN


class CircuitOpenError(ProviderError):
    """Refused without a request: the service failed too often and is cooling down."""


class OneProbe(pybreaker.CircuitBreakerListener):
    """Half-open lets one probe call through at a time (pybreaker lets every caller through
    until the first verdict); the others are refused as if the circuit were still open."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._in_flight = False

    def before_call(
        self, cb: pybreaker.CircuitBreaker, func: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> None:
        if cb.current_state != pybreaker.STATE_HALF_OPEN:
            return
        with self._lock:
            if self._in_flight:
                raise pybreaker.CircuitBreakerError(
                    "circuit half-open; a probe request is already in flight"
                )
            self._in_flight = True

    def _verdict(self) -> None:
        with self._lock:
            self._in_flight = False

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        self._verdict()

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self._verdict()

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        self._verdict()


def circuit_breaker(
    name: str,
    *,
    threshold: int,
    cooldown: float,
    counts: Callable[[BaseException], bool] = lambda exc: True,
    listeners: Sequence[pybreaker.CircuitBreakerListener] = (),
) -> pybreaker.CircuitBreaker:
    """closed → open after `threshold` consecutive failures (exceptions for which `counts`
    is true; any other outcome resets the count) → half-open after `cooldown` seconds (one
    probe call) → closed when the probe succeeds, open again when it fails. A failing call
    raises its own exception, never pybreaker's "circuit opened" in its place."""
    return pybreaker.CircuitBreaker(
        fail_max=threshold,
        reset_timeout=cooldown,
        name=name,
        throw_new_error_on_trip=False,
        exclude=[lambda exc: not counts(exc)],
        listeners=[OneProbe(), *listeners],
    )


def quiet(breaker: pybreaker.CircuitBreaker) -> bool:
    """Closed with no failure counted: a successful call would change nothing, so a hot
    path may skip pybreaker's bookkeeping (docs/PERFORMANCE.md, "One handler, one database
    client") and `record_failure` only when the call fails."""
    return breaker.current_state == pybreaker.STATE_CLOSED and breaker.fail_counter == 0


def record_failure(breaker: pybreaker.CircuitBreaker, exc: BaseException) -> None:
    """Count `exc` against the breaker as if a call through it had raised it."""
    with contextlib.suppress(type(exc), pybreaker.CircuitBreakerError), breaker.calling():
        raise exc


def breaker_state(breaker: pybreaker.CircuitBreaker) -> BreakerState:
    """The state now: an open circuit whose cool-down has passed reads half-open (pybreaker
    moves it there on the next call)."""
    state = BreakerState(breaker.current_state)
    opened = breaker._state_storage.opened_at
    if state is BreakerState.OPEN and opened is not None:
        if datetime.now(UTC) >= opened + timedelta(seconds=breaker.reset_timeout):
            return BreakerState.HALF_OPEN
    return state


def describe(breaker: pybreaker.CircuitBreaker) -> str:
    return f"circuit {breaker_state(breaker).value} ({breaker.fail_counter} consecutive failures)"


def refusal(breaker: pybreaker.CircuitBreaker, exc: pybreaker.CircuitBreakerError) -> str:
    """Why a call was refused, in words (an open circuit says when it will probe)."""
    opened = breaker._state_storage.opened_at
    if str(exc).startswith("circuit half-open") or opened is None:
        return str(exc)
    elapsed = (datetime.now(UTC) - opened).total_seconds()
    wait = max(0.0, breaker.reset_timeout - elapsed)
    return (
        f"circuit open after {breaker.fail_counter} consecutive failures; next probe in {wait:.1f}s"
    )
