"""Response models of the JSON routes besides the dashboard (whose models live in the core):
they serialise the responses and describe them in `/openapi.json`."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from overnight_pipeline.core.money import DecimalString
from overnight_pipeline.storage.queries import JobRun


class _Out(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True
    )


class InvalidParam(_Out):
    name: str
    reason: str
    value: Any


class ProblemDetails(_Out):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    invalid_params: list[InvalidParam] | None = None


class Health(_Out):
    status: Literal["ok"]


class Checks(_Out):
    """One key per service, named by what it really is: the app database's key is its
    backend (`postgresql`, or `sqlite` for `make demo`), so a client never reads a PostgreSQL
    status from a server that has none."""

    postgresql: Literal["ok", "unreachable"] | None = Field(
        default=None, description="Present when the app database is PostgreSQL."
    )
    sqlite: Literal["ok", "unreachable"] | None = Field(
        default=None, description="Present when the app database is SQLite."
    )
    redis: Literal["ok", "unreachable"]


class Readiness(_Out):
    """`degraded`: Redis is down and the dashboard answers from PostgreSQL alone."""

    status: Literal["ready", "degraded", "unavailable"]
    checks: Checks


class AuditAsset(_Out):
    asset_id: uuid.UUID
    market: str
    symbol: str


class AuditCalculation(_Out):
    correlation_id: uuid.UUID
    score: DecimalString
    calculated_at: datetime


class AuditResponse(_Out):
    asset: AuditAsset
    data: list[AuditCalculation]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next (older) page; null on the last page."
    )


class JobsResponse(_Out):
    data: list[JobRun]
