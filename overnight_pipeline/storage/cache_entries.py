"""What a Redis cache entry is (BEHAVIOUR §5): its key names, its version, its contents.

An entry is a user's `recs:{userId}` and `portfolio:{userId}` documents with a 24 h TTL.
Every entry carries a version, `market_date|generated_at` in a fixed-width UTC form, so that
string order is time order. It lives in a sidecar key `recs_version:{userId}` (same TTL)
together with the entry's `totalInvestable`. Writing, reading and refilling entries:
`storage.cache`; checking what was read: `storage.cache_validation`; deleting them:
`storage.cache_invalidation`.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

# market_date (10) + "|" + generated_at as YYYY-MM-DDTHH:MM:SS.ffffffZ (27).
VERSION_LENGTH = 38

# How far ahead of this machine's clock another honest writer's clock may be.
CLOCK_SKEW = timedelta(minutes=10)


@dataclass(frozen=True)
class CacheEntry:
    """One user's two cache documents, as JSON bytes from the core payload models.

    `total_investable` (the contribution C) rides in the sidecar key: the dashboard needs it
    and the documents do not carry it. Without it the dashboard treats the entry as a miss
    and serves (and refills) from PostgreSQL.
    """

    user_id: uuid.UUID
    market_date: date
    generated_at: datetime
    recs_json: bytes
    portfolio_json: bytes
    total_investable: Decimal | None = None

    @property
    def version(self) -> str:
        return entry_version(self.market_date, self.generated_at)


@dataclass(frozen=True)
class CachedEntry:
    """What `read_entry` found: both documents plus the sidecar's version and total, and the
    sidecar as stored (`digest` names exactly these bytes)."""

    recs_json: bytes
    portfolio_json: bytes
    version: str
    total_investable: str | None
    sidecar: bytes = b""

    @property
    def digest(self) -> str:
        """What the refill passes as `replacing`: the scripts compute the same in Redis."""
        content = self.recs_json + b"\n" + self.portfolio_json + b"\n" + self.sidecar
        return hashlib.sha1(content, usedforsecurity=False).hexdigest()


def entry_version(market_date: date, generated_at: datetime) -> str:
    """`2026-11-30|2026-11-30T09:30:00.000000Z`: fixed width, so string order = time order."""
    if generated_at.tzinfo is None:
        raise ValueError(f"generated_at={generated_at!r} is naive: it must carry a timezone")
    stamp = version_stamp(generated_at)
    version = f"{market_date.isoformat()}|{stamp}"
    if len(version) != VERSION_LENGTH:
        raise ValueError(f"market_date={market_date!r} does not give a fixed-width version")
    return version


def not_after(now: datetime | None = None) -> str:
    """The newest version an honest writer can have written by `now` (clocks `CLOCK_SKEW`
    apart, a market date at most a day ahead of UTC): anything later is not believed."""
    latest = (now or datetime.now(UTC)) + CLOCK_SKEW
    return entry_version(latest.date() + timedelta(days=1), latest)


_latest_memo: tuple[int, str] = (0, "")


def latest_version(now: datetime) -> str:
    """`not_after(now)`, computed once per second (the hot path asks on every hit)."""
    global _latest_memo
    second = int(now.timestamp())
    if _latest_memo[0] != second:
        _latest_memo = (second, not_after(now.replace(microsecond=0)))
    return _latest_memo[1]


def version_stamp(moment: datetime) -> str:
    """`moment` as a version writes it: fixed-width UTC, `2026-11-30T09:30:00.000000Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def recs_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    return f"{prefix}recs:{user_id}"


def portfolio_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    return f"{prefix}portfolio:{user_id}"


def version_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    return f"{prefix}recs_version:{user_id}"


def changed_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    """The user's change marker (`storage.freshness`): when their inputs last changed."""
    return f"{prefix}changed:{user_id}"


def entry_keys(user_id: uuid.UUID | str, prefix: str) -> list[str]:
    """The entry's three keys, in the order the scripts take them: recs, portfolio, sidecar."""
    return [recs_key(user_id, prefix), portfolio_key(user_id, prefix), version_key(user_id, prefix)]
