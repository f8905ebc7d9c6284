"""Redis cache store (BEHAVIOUR §5): writing, reading and refilling users' entries
(`storage.cache_entries` says what an entry is).

One Lua script compares and writes an entry's three keys (both documents and the sidecar
holding its version and `totalInvestable`) atomically inside Redis: an entry is written unless
the stored version is newer. A backfill of an older market date, even one generated later,
therefore leaves a fresher entry alone, however the writers interleave.

Redis is not trusted (BEHAVIOUR §5): readers check what they read (`storage.cache_validation`),
and only a plausible stored version protects an entry from being overwritten: one that is not
a version at all, is dated after what an honest clock allows, has lost its documents, or is
exactly the entry a reader rejected (the refill passes its digest) is overwritten whatever it
says; a valid newer entry written since the read still wins.

The pipeline writes with the sync client (`write_entries`, pipelined: one round trip per
chunk); the dashboard reads and refills with `redis.asyncio` (`read_entry`,
`refill_entry`). Keys of one user are not hash-tagged (the names are a contract), so the
script needs a single Redis, not a cluster.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from overnight_pipeline.core.chunks import chunks
from overnight_pipeline.storage.cache_entries import (
    VERSION_LENGTH,
    CachedEntry,
    CacheEntry,
    changed_key,
    entry_keys,
    entry_version,
    latest_version,
    not_after,
)

DEFAULT_TTL_SECONDS = 86_400
DEFAULT_CHUNK = 1_000

# Whether the entry at `keys` (recs, portfolio, sidecar) is kept rather than replaced by one
# of `version`: only a plausible entry protects itself. A sidecar that is not a version
# (garbage, another type), is dated after `latest` (the newest version an honest writer could
# hold now), lacks its documents, or is exactly the entry a reader rejected (`replacing`, its
# digest: nothing was written since) is overwritten whatever it says.
_KEPT = """
local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then return nil end
  return value
end
local function kept(recs_key, portfolio_key, sidecar_key, version, latest, replacing)
  local stored = read(sidecar_key)
  if stored
    and string.match(stored, '^%d%d%d%d%-%d%d%-%d%d|%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ|')
    and string.sub(stored, 1, 10) <= string.sub(latest, 1, 10)
    and string.sub(stored, 12, 38) <= string.sub(latest, 12, 38)
    and string.sub(stored, 1, 38) > version then
    local recs, portfolio = read(recs_key), read(portfolio_key)
    if recs and portfolio and (replacing == ''
        or redis.sha1hex(recs .. '\\n' .. portfolio .. '\\n' .. stored) ~= replacing) then
      return true
    end
  end
  return false
end
"""

# KEYS: recs, portfolio, sidecar. ARGV: version, recs json, portfolio json, ttl, total,
# not_after, replacing (the digest of an entry the reader rejected, or ""). Returns 1 when
# written, 0 when a newer entry was kept (`_KEPT`).
_WRITE_UNLESS_NEWER = (
    _KEPT
    + """
if kept(KEYS[1], KEYS[2], KEYS[3], ARGV[1], ARGV[6], ARGV[7]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('SET', KEYS[3], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[4])
return 1
"""
)

# The same for many entries at once (the pipeline's writes: nothing is being replaced).
# KEYS: recs, portfolio, sidecar of each entry in turn. ARGV: ttl, not_after, then each
# entry's recs json, portfolio json and sidecar (its version, "|", its total: the version is
# its first 38 characters). Returns how many entries were written.
_WRITE_ALL_UNLESS_NEWER = (
    _KEPT
    + """
local ttl, latest, written = ARGV[1], ARGV[2], 0
for i = 1, #KEYS / 3 do
  local k = 3 * i - 3
  local sidecar = ARGV[k + 5]
  if not kept(KEYS[k + 1], KEYS[k + 2], KEYS[k + 3], string.sub(sidecar, 1, 38), latest, '') then
    redis.call('SET', KEYS[k + 1], ARGV[k + 3], 'EX', ttl)
    redis.call('SET', KEYS[k + 2], ARGV[k + 4], 'EX', ttl)
    redis.call('SET', KEYS[k + 3], sidecar, 'EX', ttl)
    written = written + 1
  end
end
return written
"""
)

# KEYS: recs, portfolio, sidecar. ARGV: replacing. Deletes the rejected entry unless it
# changed since it was read (used when the fallback has nothing young enough to cache).
_DELETE_IF_SAME = """
local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then return '' end
  return value
end
if redis.sha1hex(read(KEYS[1]) .. '\\n' .. read(KEYS[2]) .. '\\n' .. read(KEYS[3])) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1
"""


# KEYS: recs, portfolio, sidecar of each user in turn. ARGV: each user's expected version.
# Returns the (1-based) positions of the users whose entry is not whole at that version.
_MISSING = """
local missing = {}
for i = 1, #ARGV do
  local sidecar = redis.pcall('GET', KEYS[3 * i])
  local whole = type(sidecar) == 'string'
    and string.sub(sidecar, 1, 38) == ARGV[i]
    and string.sub(sidecar, 39, 39) == '|'
  if whole then
    whole = redis.call('EXISTS', KEYS[3 * i - 2], KEYS[3 * i - 1]) == 2
  end
  if not whole then missing[#missing + 1] = i end
end
return missing
"""


@dataclass(frozen=True)
class WriteReport:
    written: int
    kept_newer: int


def _args(
    entry: CacheEntry, ttl_seconds: int, latest: str, replacing: str | None = None
) -> list[Any]:
    total = "" if entry.total_investable is None else format(entry.total_investable, "f")
    return [
        entry.version,
        entry.recs_json,
        entry.portfolio_json,
        ttl_seconds,
        total,
        latest,
        replacing or "",
    ]


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

    Each script call decides and writes `PER_CALL` entries inside Redis: this process sends
    a command per `PER_CALL` entries, not one per entry (redis-py's per-command packing,
    queuing and reply parsing were most of the shard step's cache writes), and Redis serves
    other clients between two calls (a call of a whole chunk would hold them ≈ 5 ms).

    Redis errors propagate (the cache step must fail visibly, BEHAVIOUR §7).
    """
    _check_ttl(ttl_seconds)
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    # One SCRIPT LOAD per call, then plain EVALSHA in the pipelines: redis-py's own
    # pipeline script support would add a SCRIPT EXISTS round trip to every chunk.
    client.script_load(_WRITE_ALL_UNLESS_NEWER)
    versions: dict[tuple[date, datetime], str] = {}
    written = kept = 0
    for batch in chunks(entries, chunk):
        calls = [
            _call_arguments(batch[i : i + PER_CALL], prefix, ttl_seconds, versions)
            for i in range(0, len(batch), PER_CALL)
        ]
        results = _run_calls(client, calls)
        if any(isinstance(r, NoScriptError) for r in results):
            # The script cache was flushed mid-run; writing again is idempotent.
            client.script_load(_WRITE_ALL_UNLESS_NEWER)
            results = _run_calls(client, calls)
        for r in results:
            if isinstance(r, Exception):
                raise r
        ones = sum(map(int, results))
        written += ones
        kept += len(batch) - ones
    return WriteReport(written=written, kept_newer=kept)


# Entries per call of `_WRITE_ALL_UNLESS_NEWER`.
PER_CALL = 100


def _run_calls(client: redis.Redis, calls: list[list[Any]]) -> list[Any]:
    sha = script_sha(_WRITE_ALL_UNLESS_NEWER)
    with client.pipeline(transaction=False) as pipe:
        for call in calls:
            pipe.evalsha(sha, *call)
        return list(pipe.execute(raise_on_error=False))


def _call_arguments(
    batch: Sequence[CacheEntry],
    prefix: str,
    ttl_seconds: int,
    versions: dict[tuple[date, datetime], str],
) -> list[Any]:
    """EVALSHA's arguments after the script's name for `batch`: the number of keys, the
    keys, then `_WRITE_ALL_UNLESS_NEWER`'s ARGV. An entry's version (and "|") is made once
    per (market date, generated_at) of the call (a batch's entries share theirs), kept in
    `versions`."""
    keys: list[str] = []
    args: list[Any] = [ttl_seconds, not_after()]
    for entry in batch:
        moment = (entry.market_date, entry.generated_at)
        version = versions.get(moment)
        if version is None:
            version = versions[moment] = entry_version(*moment) + "|"
        total = entry.total_investable
        keys += entry_keys(str(entry.user_id), prefix)
        sidecar = version if total is None else version + format(total, "f")
        args += (entry.recs_json, entry.portfolio_json, sidecar)
    return [len(keys), *keys, *args]


def entries_missing(
    client: redis.Redis, versions: Sequence[tuple[uuid.UUID, str]], *, prefix: str = ""
) -> list[uuid.UUID]:
    """Those of (user, version) whose entry Redis does not hold whole at exactly that
    version (a sidecar of another version or none, a document missing), decided inside
    Redis by one script call: no document is transferred, and this process sends one
    command per chunk instead of two per user."""
    if not versions:
        return []
    keys = [key for user_id, _ in versions for key in entry_keys(str(user_id), prefix)]
    script = client.register_script(_MISSING)
    found = script(keys=keys, args=[v for _, v in versions])
    return [versions[int(i) - 1][0] for i in found]


def get_entry(client: redis.Redis, user_id: uuid.UUID, *, prefix: str = "") -> CachedEntry | None:
    """The sync twin of `read_entry` (pipeline checks, tests, operators)."""
    values = client.mget(entry_keys(user_id, prefix))
    return _entry(values)


async def read_entry(
    client: aioredis.Redis, user_id: uuid.UUID | str, *, prefix: str = ""
) -> CachedEntry | None:
    """Both documents and the sidecar in one round trip; None unless all three are there."""
    values = await client.mget(entry_keys(user_id, prefix))
    return _entry(values)


async def read_entry_and_change(
    client: aioredis.Redis, user_id: uuid.UUID | str, *, prefix: str = ""
) -> tuple[CachedEntry | None, Any]:
    """`read_entry` and the user's change marker as stored (None if absent), in the same
    MGET: the dashboard's one round trip (`storage.freshness.marker_stamp` reads it)."""
    values = await client.mget([*entry_keys(user_id, prefix), changed_key(user_id, prefix)])
    return _entry(values[:3]), values[3]


def _entry(values: Sequence[Any]) -> CachedEntry | None:
    recs, portfolio, sidecar = values
    if recs is None or portfolio is None or sidecar is None:
        return None
    meta = sidecar.decode("utf-8", "replace") if isinstance(sidecar, bytes) else str(sidecar)
    version, total = meta[:VERSION_LENGTH], meta[VERSION_LENGTH + 1 :]
    return CachedEntry(
        recs_json=recs if isinstance(recs, bytes) else str(recs).encode(),
        portfolio_json=portfolio if isinstance(portfolio, bytes) else str(portfolio).encode(),
        version=version,
        total_investable=total or None,
        sidecar=sidecar if isinstance(sidecar, bytes) else str(sidecar).encode(),
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
    replacing: str | None = None,
) -> bool:
    """Put back an entry read from PostgreSQL, through the same never-overwrite-newer script.

    It lives only for what remains of its 24 h (`max_ttl` minus its age); an entry already
    older than that is not cached at all, so the cache never holds a day-old document.
    `replacing` is the digest of the entry the reader rejected: that entry is overwritten
    (or, when nothing is young enough to cache, deleted) whatever its version says, unless
    it changed since. True when written; False when too old or a newer entry was kept.
    """
    keys = entry_keys(entry.user_id, prefix)
    ttl = remaining_ttl(entry.generated_at, now=now, max_ttl=max_ttl)
    if ttl <= 0:
        if replacing is not None:
            await evict_entry(client, entry.user_id, replacing, prefix=prefix)
        return False
    latest = latest_version(now or datetime.now(UTC))
    result = await _evalsha(client, _WRITE_UNLESS_NEWER, keys, _args(entry, ttl, latest, replacing))
    return int(result) == 1


async def evict_entry(
    client: aioredis.Redis, user_id: uuid.UUID | str, replacing: str, *, prefix: str = ""
) -> bool:
    """Delete the entry a reader rejected (digest `replacing`) unless it changed since."""
    result = await _evalsha(client, _DELETE_IF_SAME, entry_keys(user_id, prefix), [replacing])
    return int(result) == 1


@functools.cache
def script_sha(script: str) -> str:
    """The SHA-1 that EVALSHA names `script` by, computed once per script."""
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


async def _evalsha(client: aioredis.Redis, script: str, keys: list[str], args: list[Any]) -> Any:
    """What redis-py's `register_script(...)(...)` does, without building the script object
    and its SHA-1 on every call (with `not_after`, CPU on every cache miss:
    docs/PERFORMANCE.md, "Figures once quoted in the code")."""
    try:
        return await client.evalsha(script_sha(script), len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script)
        return await client.evalsha(script_sha(script), len(keys), *keys, *args)
