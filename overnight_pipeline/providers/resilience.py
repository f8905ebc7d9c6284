"""Retries with backoff, Retry-After and a circuit breaker for the HTTP providers."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from enum import Enum

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
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitOpenError(ProviderError):
    """Refused without a request: the service failed too often and is cooling down."""


class CircuitBreaker:
    """closed → open after `threshold` consecutive failures → half-open after `cooldown`
    (one probe request) → closed when the probe succeeds, open again when it fails."""

    def __init__(
        self,
        name: str,
        *,
        threshold: int,
        cooldown: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.threshold = threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()  # Dagster may call one provider from several threads
        self._state = BreakerState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False
        self.times_opened = 0

    @property
    def state(self) -> BreakerState:
        with self._lock:
            return self._current()

    def _current(self) -> BreakerState:
        if self._state is BreakerState.OPEN and self._clock() - self._opened_at >= self.cooldown:
            self._state = BreakerState.HALF_OPEN
            self._probe_in_flight = False
        return self._state

    def before_request(self) -> None:
        """Raise CircuitOpenError unless a request may go out now."""
        with self._lock:
            state = self._current()
            if state is BreakerState.CLOSED:
                return
            if state is BreakerState.HALF_OPEN and not self._probe_in_flight:
                self._probe_in_flight = True
                return
            wait = max(0.0, self.cooldown - (self._clock() - self._opened_at))
            detail = (
                f"circuit open after {self._failures} consecutive failures; "
                f"next probe in {wait:.1f}s"
                if state is BreakerState.OPEN
                else "circuit half-open; a probe request is already in flight"
            )
        raise CircuitOpenError(self.name, detail)

    def record_success(self) -> None:
        with self._lock:
            self._state = BreakerState.CLOSED
            self._failures = 0
            self._probe_in_flight = False

    def record_failure(self) -> None:
        with self._lock:
            self._failures += 1
            state = self._current()
            if state is BreakerState.HALF_OPEN or (
                state is BreakerState.CLOSED and self._failures >= self.threshold
            ):
                self._state = BreakerState.OPEN
                self._opened_at = self._clock()
                self._probe_in_flight = False
                self.times_opened += 1

    def release_probe(self) -> None:
        """A probe ended without a verdict (cancelled): let the next request probe."""
        with self._lock:
            self._probe_in_flight = False

    def describe(self) -> str:
        with self._lock:
            return f"circuit {self._current().value} ({self._failures} consecutive failures)"
