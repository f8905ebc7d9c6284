"""The log lines of a shard step (BEHAVIOUR §9 Progress): "Overnight job started", one
"User batch processed" per batch and "User processing failed" per failed user, each with
its fields as `extra` (the JSON log line's fields)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import date
from typing import Any

from overnight_pipeline.logs import mask_user

JOB_STARTED = "Overnight job started"
BATCH_PROCESSED = "User batch processed"
USER_FAILED = "User processing failed"
FAILED_USERS_LOGGED = 100
"""Failed users logged one by one per shard step; the rest are counted in one line (every
failure is in the step's metadata and the user's failed `CALC_COMPLETED`)."""


def _about(seconds: float) -> str:
    """A duration as a person reads it: 0.4 s, 12 s, 3 min 20 s, 1 h 05 min."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


class Progress:
    """The log lines of one shard step (BEHAVIOUR §9 Progress):
    "Overnight job started", then per batch "User batch processed" with batch n of N, users,
    failed, seconds, users/s (the batch's) and the estimated time left (at the step's
    average rate so far), and "User processing failed" per failed user, id masked."""

    def __init__(
        self,
        log: logging.Logger,
        *,
        market: str,
        day: date,
        correlation_id: uuid.UUID,
        run_id: str,
        shard: int,
        shards: int,
        users: int,
        batches: int,
    ) -> None:
        self._log = log
        self._where = f"{market} {day.isoformat()}, shard {shard + 1} of {shards}"
        self._common: dict[str, Any] = {
            "correlationId": str(correlation_id),
            "runId": run_id,
            "market": market,
            "marketDate": day.isoformat(),
            "shard": shard + 1,
            "shards": shards,
        }
        self._users = users
        self._batches = batches
        self._done = 0
        self._number = 0
        self._failed_logged = 0
        self._began = self._last = time.perf_counter()

    def _emit(self, level: int, message: str, event: str, **fields: Any) -> None:
        self._log.log(level, message, extra={"event": event, **self._common, **fields})

    def started(self, *, users: int, resumed: int, batch_size: int) -> None:
        self._emit(
            logging.INFO,
            f"{JOB_STARTED}: {self._where}: {users} users ({resumed} already done), "
            f"{self._batches} batches of up to {batch_size}",
            JOB_STARTED,
            jobType="scoring",
            targetMarkets=[self._common["market"]],
            userCount=users,
            usersResumed=resumed,
            batchCount=self._batches,
            batchSize=batch_size,
        )
        self._began = self._last = time.perf_counter()

    def batch(self, users: int, failures: Sequence[Mapping[str, str]]) -> None:
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        self._number += 1
        self._done += users
        rate = users / seconds if seconds > 0 else 0.0
        average = self._done / (now - self._began) if now > self._began else 0.0
        left = (self._users - self._done) / average if average > 0 else 0.0
        for failure in failures:
            self._failed(failure)
        self._emit(
            logging.INFO,
            f"{BATCH_PROCESSED}: batch {self._number} of {self._batches} ({self._where}): "
            f"{users} users, {len(failures)} failed, {seconds:.2f} s, {rate:,.1f} users/s, "
            f"about {_about(left)} left",
            BATCH_PROCESSED,
            batchNumber=self._number,
            batchCount=self._batches,
            usersProcessed=users,
            usersFailed=len(failures),
            duration=round(seconds * 1000),
            seconds=round(seconds, 3),
            usersPerSecond=round(rate, 1),
            usersDone=self._done,
            usersTotal=self._users,
            etaSeconds=round(left, 1),
        )

    def _failed(self, failure: Mapping[str, str]) -> None:
        self._failed_logged += 1
        if self._failed_logged > FAILED_USERS_LOGGED:
            if self._failed_logged == FAILED_USERS_LOGGED + 1:
                self._emit(
                    logging.ERROR,
                    f"{USER_FAILED}: more than {FAILED_USERS_LOGGED} users failed "
                    f"({self._where}); the others are in the step's metadata",
                    USER_FAILED,
                    batchNumber=self._number,
                )
            return
        user = mask_user(failure["user"])
        self._emit(
            logging.ERROR,
            f"{USER_FAILED}: user {user} at {failure['stage']}: {failure['error'][:300]}",
            USER_FAILED,
            userId=user,
            stage=failure["stage"],
            error=failure["error"][:1000],
            batchNumber=self._number,
        )
