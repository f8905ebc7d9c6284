"""Redis cache store (BEHAVIOUR §5): `recs:{userId}` and `portfolio:{userId}` with a 24 h TTL.

Every entry carries a version, `market_date|generated_at` in a fixed-width UTC form, so that
string order is time order. It lives in a sidecar key `recs_version:{userId}` (same TTL)
together with the entry's `totalInvestable`, and one Lua script compares and writes all
three keys atomically inside Redis: an entry is written unless the stored version is newer.
A backfill of an older market date, even one generated later, therefore leaves a fresher
entry alone, however the writers interleave.

Redis is not trusted (BEHAVIOUR §5). Readers check the whole entry (`validate_entry`) and treat a
failure as a miss. Only a plausible stored version protects an entry from being overwritten:
one that is not a version at all, is dated after what an honest clock allows, has lost its
documents, or is exactly the entry a reader rejected (the refill passes its digest) is
overwritten whatever it says; a valid newer entry written since the read still wins.

Validating an entry costs ≈ 40–60 µs per read (pydantic-core building Python objects from
4.6 KB of JSON), a third of a cache hit's CPU, and made the dashboard miss BEHAVIOUR §8's
4,000 hits/s (docs/PERFORMANCE.md, "Every hit validated in full"). So the dashboard keeps a
per-process memo of the entries it validated (`ValidatedEntries`): a dict keyed by the exact
bytes of both documents and the sidecar, so a hit compares the bytes themselves (an equal
hash alone never matches), holding the parsed result. Everything that depends only on those
bytes is what the memo skips; what depends on the request or the clock (the owner is the
token's user, the version is not dated after `not_after(now)`) runs on every read. A
remembered hit costs ≈ 3 µs against ≈ 42 µs (200 distinct entries, fresh bytes per read, one
process). Bound: an LRU (cachetools) of `MEMO_MAX_BYTES` = 64 MiB estimated at 4× the raw
bytes + 512 B per entry (measured 3.96× with tracemalloc on the pipeline's documents,
tested), ≈ 3,500 entries of 4.6 KB; an entry over 64 KB is never held. These figures:
docs/PERFORMANCE.md, "Validated entries remembered". Callers must treat what it returns as
read-only.

The pipeline writes with the sync client (`write_entries`, pipelined: one round trip per
chunk); the dashboard reads and refills with `redis.asyncio` (`read_entry`,
`refill_entry`). Keys of one user are not hash-tagged (the names are a contract), so the
script needs a single Redis, not a cluster.
"""

from __future__ import annotations

import functools
import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

import redis
import redis.asyncio as aioredis
from cachetools import LRUCache
from redis.exceptions import NoScriptError

from overnight_pipeline.core.chunks import chunks
from overnight_pipeline.core.payloads import (
    NON_NEGATIVE_DECIMAL_RE,
    InvalidDocument,
    WirePortfolio,
    WireRecommendations,
    check_documents,
    parse_time,
)

DEFAULT_TTL_SECONDS = 86_400
DEFAULT_CHUNK = 1_000

# market_date (10) + "|" + generated_at as YYYY-MM-DDTHH:MM:SS.ffffffZ (27).
VERSION_LENGTH = 38

# KEYS: recs, portfolio, sidecar. ARGV: version, recs json, portfolio json, ttl, total,
# not_after (the newest version an honest writer could hold now), replacing (the digest of an
# entry the reader rejected, or ""). Returns 1 when written, 0 when a newer entry was kept.
# Only a plausible entry protects itself: a sidecar that is not a version (garbage, another
# type), is dated after `not_after`, lacks its documents, or is exactly the entry a reader
# rejected (same digest: nothing was written since) is overwritten whatever it says.
_WRITE_UNLESS_NEWER = """
local function read(key)
  local value = redis.pcall('GET', key)
  if type(value) ~= 'string' then return nil end
  return value
end
local stored = read(KEYS[3])
if stored
  and string.match(stored, '^%d%d%d%d%-%d%d%-%d%d|%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ|')
  and string.sub(stored, 1, 10) <= string.sub(ARGV[6], 1, 10)
  and string.sub(stored, 12, 38) <= string.sub(ARGV[6], 12, 38)
  and string.sub(stored, 1, 38) > ARGV[1] then
  local recs, portfolio = read(KEYS[1]), read(KEYS[2])
  if recs and portfolio and (ARGV[7] == ''
      or redis.sha1hex(recs .. '\\n' .. portfolio .. '\\n' .. stored) ~= ARGV[7]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[4])
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
redis.call('SET', KEYS[3], ARGV[1] .. '|' .. ARGV[5], 'EX', ARGV[4])
return 1
"""

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

# KEYS: recs, portfolio, sidecar. ARGV: cutoff, latest (both generatedAt stamps as in a
# version). Deletes the user's three keys unless the sidecar is a plausible version generated
# after `cutoff` (and not after `latest`): returns the number of keys deleted, or -1 when a
# newer entry was kept.
_DELETE_UNLESS_NEWER = """
local stored = redis.pcall('GET', KEYS[3])
if type(stored) == 'string'
  and string.match(stored, '^%d%d%d%d%-%d%d%-%d%d|%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ|')
  and string.sub(stored, 12, 38) > ARGV[1]
  and string.sub(stored, 12, 38) <= ARGV[2] then
  return -1
end
return redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
"""

# The memo of validated entries (`ValidatedEntries`): what it may hold, in estimated bytes.
# One entry costs its bytes (the key) plus the parsed documents, which 4x the raw bytes
# covers on the pipeline's documents (tracemalloc: docs/PERFORMANCE.md, "Validated entries
# remembered"; tested), plus the LRU's own slot.
MEMO_MAX_BYTES = 64 * 1024 * 1024
MEMO_BYTES_PER_RAW_BYTE = 4
MEMO_ENTRY_OVERHEAD = 512
# Larger entries (far above what the pipeline writes) are validated on every read, never
# held.
MEMO_MAX_ENTRY_BYTES = 64 * 1024

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
class WriteReport:
    written: int
    kept_newer: int


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


@dataclass(frozen=True)
class ValidEntry:
    """An entry that passed every check of the contract (`validate_entry`)."""

    recs: WireRecommendations
    portfolio: WirePortfolio
    total_investable: str


def entry_version(market_date: date, generated_at: datetime) -> str:
    """`2026-11-30|2026-11-30T09:30:00.000000Z`: fixed width, so string order = time order."""
    if generated_at.tzinfo is None:
        raise ValueError(f"generated_at={generated_at!r} is naive: it must carry a timezone")
    stamp = _stamp(generated_at)
    version = f"{market_date.isoformat()}|{stamp}"
    if len(version) != VERSION_LENGTH:
        raise ValueError(f"market_date={market_date!r} does not give a fixed-width version")
    return version


def not_after(now: datetime | None = None) -> str:
    """The newest version an honest writer can have written by `now` (clocks `CLOCK_SKEW`
    apart, a market date at most a day ahead of UTC): anything later is not believed."""
    latest = (now or datetime.now(UTC)) + CLOCK_SKEW
    return entry_version(latest.date() + timedelta(days=1), latest)


_SIDECAR = re.compile(
    rb"([0-9]{4}-[0-9]{2}-[0-9]{2})\|([0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}"
    rb"\.[0-9]{6}Z)\|(.*)",
    re.DOTALL,
)


def validate_entry(
    entry: CachedEntry,
    user_key: str,
    *,
    now: datetime,
    memo: ValidatedEntries | None = None,
) -> ValidEntry:
    """The whole entry against the contract (BEHAVIOUR §5), or `InvalidDocument` naming why: both
    documents in full and owned by `user_key`, the sidecar a plausible version of exactly this
    `generatedAt`, its total a non-negative decimal string.

    With a `memo`, bytes it already holds skip the content checks (their outcome depends on
    the bytes alone); the owner and the version's date against `now` are checked every time."""
    if memo is not None:
        known = memo.get(entry)
        if known is not None:
            _check_request(known.owner, known.version, user_key, now)
            return known.valid
    match = _SIDECAR.fullmatch(entry.sidecar)
    if match is None:
        raise InvalidDocument("sidecar: not a version")
    total = match[3].decode("ascii", "replace")
    if not total:
        raise InvalidDocument("sidecar: no totalInvestable")
    if NON_NEGATIVE_DECIMAL_RE.fullmatch(total) is None:
        raise InvalidDocument("sidecar: totalInvestable is not a non-negative decimal")
    version = match[1].decode() + "|" + match[2].decode()
    _check_not_future(version, now)
    try:
        date.fromisoformat(version[:10])
    except ValueError:
        raise InvalidDocument("sidecar: market date is not a date") from None
    recs, portfolio = check_documents(entry.recs_json, entry.portfolio_json, user_key)
    stamp = recs["generatedAt"]
    # Usually the very same text (pydantic writes UTC as "Z"); else compare the instants.
    if stamp != version[11:] and _stamp(parse_time(stamp)) != version[11:]:
        raise InvalidDocument("sidecar: version is not the document's generatedAt")
    valid = ValidEntry(recs, portfolio, total)
    if memo is not None:
        memo.add(entry, _Validated(valid, version, user_key))
    return valid


def _check_not_future(version: str, now: datetime) -> None:
    latest = _latest(now)
    if version[:10] > latest[:10] or version[11:] > latest[11:]:
        raise InvalidDocument("sidecar: version dated in the future")


def _check_request(owner: str, version: str, user_key: str, now: datetime) -> None:
    """What a remembered entry is still checked for: it depends on the request and the clock."""
    _check_not_future(version, now)
    if owner != user_key:
        # Both documents named `owner` when validated; the same words as `check_documents`.
        raise InvalidDocument("recs: userId is another user's")


@dataclass(frozen=True, slots=True)
class _Validated:
    valid: ValidEntry
    version: str
    owner: str  # the userId of both documents


class ValidatedEntries:
    """Entries this process validated in full, keyed by their exact bytes (see the module
    docstring): a bounded LRU, at most `max_bytes` of estimated memory."""

    def __init__(
        self, max_bytes: int = MEMO_MAX_BYTES, *, max_entry_bytes: int = MEMO_MAX_ENTRY_BYTES
    ) -> None:
        self.max_bytes = max_bytes
        self.max_entry_bytes = max_entry_bytes
        self._entries: LRUCache[tuple[bytes, bytes, bytes], tuple[_Validated, int]] = LRUCache(
            maxsize=max_bytes, getsizeof=_cost
        )

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def size(self) -> int:
        """The estimated bytes held (never above `max_bytes`)."""
        return int(self._entries.currsize)

    def get(self, entry: CachedEntry) -> _Validated | None:
        # A dict lookup by the bytes themselves: equal hashes alone never match, the bytes
        # are compared too, so no crafted collision can stand in for a validated entry.
        found = self._entries.get((entry.recs_json, entry.portfolio_json, entry.sidecar))
        return None if found is None else found[0]

    def add(self, entry: CachedEntry, validated: _Validated) -> None:
        raw = len(entry.recs_json) + len(entry.portfolio_json) + len(entry.sidecar)
        if raw > self.max_entry_bytes:
            return
        cost = raw * MEMO_BYTES_PER_RAW_BYTE + MEMO_ENTRY_OVERHEAD
        if cost > self.max_bytes:
            return
        self._entries[(entry.recs_json, entry.portfolio_json, entry.sidecar)] = (validated, cost)


def _cost(value: tuple[_Validated, int]) -> int:
    return value[1]


_latest_memo: tuple[int, str] = (0, "")


def _latest(now: datetime) -> str:
    """`not_after(now)`, computed once per second (the hot path asks on every hit)."""
    global _latest_memo
    second = int(now.timestamp())
    if _latest_memo[0] != second:
        _latest_memo = (second, not_after(now.replace(microsecond=0)))
    return _latest_memo[1]


def _stamp(moment: datetime) -> str:
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


def _keys(user_id: uuid.UUID | str, prefix: str) -> list[str]:
    return [recs_key(user_id, prefix), portfolio_key(user_id, prefix), version_key(user_id, prefix)]


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

    Redis errors propagate (the cache step must fail visibly, BEHAVIOUR §7).
    """
    _check_ttl(ttl_seconds)
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    script = client.register_script(_WRITE_UNLESS_NEWER)
    # One SCRIPT LOAD per call, then plain EVALSHA in the pipelines: redis-py's own
    # pipeline script support would add a SCRIPT EXISTS round trip to every chunk.
    client.script_load(_WRITE_UNLESS_NEWER)
    written = kept = 0
    for batch in chunks(entries, chunk):
        latest = not_after()
        results = _run_chunk(client, script.sha, batch, prefix, ttl_seconds, latest)
        if any(isinstance(r, NoScriptError) for r in results):
            # The script cache was flushed mid-run; writing again is idempotent.
            client.script_load(_WRITE_UNLESS_NEWER)
            results = _run_chunk(client, script.sha, batch, prefix, ttl_seconds, latest)
        for r in results:
            if isinstance(r, Exception):
                raise r
        ones = sum(1 for r in results if int(r) == 1)
        written += ones
        kept += len(results) - ones
    return WriteReport(written=written, kept_newer=kept)


def _run_chunk(
    client: redis.Redis, sha: str, batch: Sequence[CacheEntry], prefix: str, ttl: int, latest: str
) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for entry in batch:
            pipe.evalsha(sha, 3, *_keys(entry.user_id, prefix), *_args(entry, ttl, latest))
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


async def read_entry_and_change(
    client: aioredis.Redis, user_id: uuid.UUID | str, *, prefix: str = ""
) -> tuple[CachedEntry | None, Any]:
    """`read_entry` and the user's change marker as stored (None if absent), in the same
    MGET: the dashboard's one round trip (`storage.freshness.marker_stamp` reads it)."""
    values = await client.mget([*_keys(user_id, prefix), changed_key(user_id, prefix)])
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
    keys = _keys(entry.user_id, prefix)
    ttl = remaining_ttl(entry.generated_at, now=now, max_ttl=max_ttl)
    if ttl <= 0:
        if replacing is not None:
            await evict_entry(client, entry.user_id, replacing, prefix=prefix)
        return False
    latest = _latest(now or datetime.now(UTC))
    result = await _evalsha(client, _WRITE_UNLESS_NEWER, keys, _args(entry, ttl, latest, replacing))
    return int(result) == 1


async def evict_entry(
    client: aioredis.Redis, user_id: uuid.UUID | str, replacing: str, *, prefix: str = ""
) -> bool:
    """Delete the entry a reader rejected (digest `replacing`) unless it changed since."""
    result = await _evalsha(client, _DELETE_IF_SAME, _keys(user_id, prefix), [replacing])
    return int(result) == 1


@functools.cache
def _sha(script: str) -> str:
    return hashlib.sha1(script.encode(), usedforsecurity=False).hexdigest()


async def _evalsha(client: aioredis.Redis, script: str, keys: list[str], args: list[Any]) -> Any:
    """What redis-py's `register_script(...)(...)` does, without building the script object
    and its SHA-1 on every call (with `not_after`, CPU on every cache miss:
    docs/PERFORMANCE.md, "Figures once quoted in the code")."""
    try:
        return await client.evalsha(_sha(script), len(keys), *keys, *args)
    except NoScriptError:
        await client.script_load(script)
        return await client.evalsha(_sha(script), len(keys), *keys, *args)


# Invalidation ------------------------------------------------------------------------------

# What a user's keys are called after the prefix (`_keys`).
_KINDS = ("recs:", "portfolio:", "recs_version:")
DEFAULT_SCAN_COUNT = 1_000


@dataclass(frozen=True)
class InvalidationReport:
    removed: int  # users whose entries were deleted
    kept_newer: int  # users whose entry was generated after the cutoff, left in place


def invalidate(
    client: redis.Redis,
    user_id: uuid.UUID,
    *,
    prefix: str = "",
    generated_before: datetime | None = None,
) -> InvalidationReport:
    """Delete `user_id`'s entry (`recs:`, `portfolio:` and their sidecar) under `prefix`,
    unless it was generated after `generated_before` (default: now), atomically in Redis.

    So an entry written concurrently from newer inputs (its `generatedAt` after the cutoff) is
    never lost; one computed before the cutoff is deleted even if written after the call began.
    A writer that computed before the change and writes after the invalidation puts its entry
    back: invalidation is a deletion, not a tombstone, and the recalculation's newer entry wins
    over it (`write_entries`). The user's `changed:` marker stays: it is a fact about their
    inputs, not a cached result, and must flag the entry refilled from PostgreSQL until the
    recalculated one lands (`storage.freshness`)."""
    if not isinstance(user_id, uuid.UUID):
        raise TypeError(f"user_id must be a UUID, got {type(user_id).__name__}")
    cutoff, latest = _cutoffs(generated_before)
    result = int(client.eval(_DELETE_UNLESS_NEWER, 3, *_keys(user_id, prefix), cutoff, latest))
    return InvalidationReport(removed=int(result > 0), kept_newer=int(result < 0))


def invalidate_all(
    client: redis.Redis,
    *,
    prefix: str = "",
    generated_before: datetime | None = None,
    count: int = DEFAULT_SCAN_COUNT,
) -> InvalidationReport:
    """`invalidate` for every user with an entry under `prefix`: keys found with `SCAN` in
    batches of about `count` (never `KEYS` or `FLUSHALL`), each user's deletion atomic and
    kept from entries generated after `generated_before` (default: now). Only the project's
    key names under the prefix are touched (`{prefix}recs:*`, `{prefix}portfolio:*`,
    `{prefix}recs_version:*`), with an empty prefix too. A key written during the scan may be
    missed: it was written after the call began. Memory is bounded by a scan's batch.
    `changed:` markers stay, as with `invalidate`."""
    if count <= 0:
        raise ValueError(f"count must be a positive integer, got {count!r}")
    cutoff, latest = _cutoffs(generated_before)
    client.script_load(_DELETE_UNLESS_NEWER)
    sha = _sha(_DELETE_UNLESS_NEWER)
    head = prefix.encode()
    removed = 0
    # Each user's keys are deleted when the first of them is found, so the scans of the
    # other kinds find only what is left: orphans and entries kept as newer (counted once).
    kept: set[bytes] = set()
    for kind in _KINDS:
        pattern = _glob_escape(prefix + kind) + "*"
        start = len(head) + len(kind)
        cursor = 0
        while True:
            cursor, found = client.scan(cursor=cursor, match=pattern, count=count)
            users = [(k if isinstance(k, bytes) else k.encode())[start:] for k in found]
            if users:
                with client.pipeline(transaction=False) as pipe:
                    for user in users:
                        keys = [head + name.encode() + user for name in _KINDS]
                        pipe.evalsha(sha, 3, *keys, cutoff, latest)
                    for user, result in zip(users, pipe.execute(), strict=True):
                        if int(result) > 0:
                            removed += 1
                        elif int(result) < 0:
                            kept.add(user)
            if cursor == 0:
                break
    return InvalidationReport(removed=removed, kept_newer=len(kept))


def _cutoffs(generated_before: datetime | None) -> tuple[str, str]:
    now = datetime.now(UTC)
    cutoff = now if generated_before is None else generated_before
    if cutoff.tzinfo is None:
        raise ValueError(f"generated_before={cutoff!r} is naive: it must carry a timezone")
    return _stamp(cutoff), not_after(now)[11:]


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob (`SCAN MATCH`)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
