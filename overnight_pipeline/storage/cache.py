"""Redis cache store (SPEC §5): `recs:{userId}` and `portfolio:{userId}` with a 24 h TTL.

Every entry carries a version, `market_date|generated_at` in a fixed-width UTC form, so that
string order is time order. It lives in a sidecar key `recs_version:{userId}` (same TTL)
together with the entry's `totalInvestable`, and one Lua script compares and writes all
three keys atomically inside Redis: an entry is written unless the stored version is newer.
A backfill of an older market date, even one generated later, therefore leaves a fresher
entry alone, however the writers interleave.

The pipeline writes with the sync client (`write_entries`, pipelined: one round trip per
chunk); the dashboard reads and refills with `redis.asyncio` (`read_entry`,
`refill_entry`). Keys of one user are not hash-tagged (the names are a contract), so the
script needs a single Redis, not a cluster.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from itertools import islice
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

DEFAULT_TTL_SECONDS = 86_400
DEFAULT_CHUNK = 1_000

# market_date (10) + "|" + generated_at as YYYY-MM-DDTHH:MM:SS.ffffffZ (27).
VERSION_LENGTH = 38

# KEYS: recs, portfolio, sidecar. ARGV: version, recs json, portfolio json, ttl, total.
# Returns 1 when written, 0 when a newer entry was kept.
_WRITE_UNLESS_NEWER = """
local stored = redis.call('GET', KEYS[3])
if stored and string.sub(stored, 1, string.len(ARGV[1])) > ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('SET', KEYS[3], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[4])
return 1
"""


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
class WriteReport:
    written: int
    kept_newer: int


@dataclass(frozen=True)
class CachedEntry:
    """What `read_entry` found: both documents plus the sidecar's version and total."""

    recs_json: bytes
    portfolio_json: bytes
    version: str
    total_investable: str | None


def entry_version(market_date: date, generated_at: datetime) -> str:
    """`2026-11-30|2026-11-30T09:30:00.000000Z`: fixed width, so string order = time order."""
    if generated_at.tzinfo is None:
        raise ValueError(f"generated_at={generated_at!r} is naive: it must carry a timezone")
    stamp = generated_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    version = f"{market_date.isoformat()}|{stamp}"
    if len(version) != VERSION_LENGTH:
        raise ValueError(f"market_date={market_date!r} does not give a fixed-width version")
    return version


def recs_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    return f"{prefix}recs:{user_id}"


def portfolio_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    return f"{prefix}portfolio:{user_id}"


def version_key(user_id: uuid.UUID | str, prefix: str = "") -> str:
    return f"{prefix}recs_version:{user_id}"


def _keys(user_id: uuid.UUID | str, prefix: str) -> list[str]:
    return [recs_key(user_id, prefix), portfolio_key(user_id, prefix), version_key(user_id, prefix)]


def _args(entry: CacheEntry, ttl_seconds: int) -> list[Any]:
    total = "" if entry.total_investable is None else format(entry.total_investable, "f")
    return [entry.version, entry.recs_json, entry.portfolio_json, ttl_seconds, total]


def _chunks(entries: Iterable[CacheEntry], size: int) -> Iterator[list[CacheEntry]]:
    it = iter(entries)
    while batch := list(islice(it, size)):
        yield batch


def _check_ttl(ttl_seconds: int) -> None:
    if not isinstance(ttl_seconds, int) or ttl_seconds <= 0:
        raise ValueError(f"ttl_seconds must be a positive integer, got {ttl_seconds!r}")


def write_entries(
    client: redis.Redis,
    entries: Iterable[CacheEntry],
    *,
    prefix: str = "",
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    chunk: int = DEFAULT_CHUNK,
) -> WriteReport:
    """Write entries unless Redis holds a newer one; one pipelined round trip per chunk.

    Redis errors propagate (the cache step must fail visibly, SPEC §7).
    """
    _check_ttl(ttl_seconds)
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    script = client.register_script(_WRITE_UNLESS_NEWER)
    # One SCRIPT LOAD per call, then plain EVALSHA in the pipelines: redis-py's own
    # pipeline script support would add a SCRIPT EXISTS round trip to every chunk.
    client.script_load(_WRITE_UNLESS_NEWER)
    written = kept = 0
    for batch in _chunks(entries, chunk):
        results = _run_chunk(client, script.sha, batch, prefix, ttl_seconds)
        if any(isinstance(r, NoScriptError) for r in results):
            # The script cache was flushed mid-run; writing again is idempotent.
            client.script_load(_WRITE_UNLESS_NEWER)
            results = _run_chunk(client, script.sha, batch, prefix, ttl_seconds)
        for r in results:
            if isinstance(r, Exception):
                raise r
        ones = sum(1 for r in results if int(r) == 1)
        written += ones
        kept += len(results) - ones
    return WriteReport(written=written, kept_newer=kept)


def _run_chunk(
    client: redis.Redis, sha: str, batch: Sequence[CacheEntry], prefix: str, ttl: int
) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for entry in batch:
            pipe.evalsha(sha, 3, *_keys(entry.user_id, prefix), *_args(entry, ttl))
        return list(pipe.execute(raise_on_error=False))


def get_entry(client: redis.Redis, user_id: uuid.UUID, *, prefix: str = "") -> CachedEntry | None:
    """The sync twin of `read_entry` (pipeline checks, tests, operators)."""
    values = client.mget(_keys(user_id, prefix))
    return _entry(values)


async def read_entry(
    client: aioredis.Redis, user_id: uuid.UUID | str, *, prefix: str = ""
) -> CachedEntry | None:
    """Both documents and the sidecar in one round trip; None unless all three are there."""
    values = await client.mget(_keys(user_id, prefix))
    return _entry(values)


def _entry(values: Sequence[Any]) -> CachedEntry | None:
    recs, portfolio, sidecar = values
    if recs is None or portfolio is None or sidecar is None:
        return None
    meta = sidecar.decode() if isinstance(sidecar, bytes) else str(sidecar)
    version, total = meta[:VERSION_LENGTH], meta[VERSION_LENGTH + 1 :]
    return CachedEntry(
        recs_json=recs if isinstance(recs, bytes) else str(recs).encode(),
        portfolio_json=portfolio if isinstance(portfolio, bytes) else str(portfolio).encode(),
        version=version,
        total_investable=total or None,
    )


def remaining_ttl(
    generated_at: datetime, *, now: datetime | None = None, max_ttl: int = DEFAULT_TTL_SECONDS
) -> int:
    """Seconds an entry generated at `generated_at` may still live: `max_ttl` minus its age."""
    now = now or datetime.now(UTC)
    return int(max_ttl - (now - generated_at).total_seconds())


async def refill_entry(
    client: aioredis.Redis,
    entry: CacheEntry,
    *,
    prefix: str = "",
    now: datetime | None = None,
    max_ttl: int = DEFAULT_TTL_SECONDS,
) -> bool:
    """Put back an entry read from PostgreSQL, through the same never-overwrite-newer script.

    It lives only for what remains of its 24 h (`max_ttl` minus its age); an entry already
    older than that is not cached at all, so the cache never holds a day-old document.
    True when written; False when too old or a newer entry was kept.
    """
    ttl = remaining_ttl(entry.generated_at, now=now, max_ttl=max_ttl)
    if ttl <= 0:
        return False
    script = client.register_script(_WRITE_UNLESS_NEWER)
    result = await script(keys=_keys(entry.user_id, prefix), args=_args(entry, ttl))
    return int(result) == 1
