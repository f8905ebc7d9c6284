"""Deleting cache entries (`overnight cache invalidate`, a recalculation's dropped users):
one user's, or every user's under a prefix, each deletion atomic in Redis and never of an
entry generated after the cutoff."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import redis

from overnight_pipeline.storage.cache import script_sha
from overnight_pipeline.storage.cache_entries import entry_keys, not_after, version_stamp

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

# What a user's keys are called after the prefix (`entry_keys`).
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
    result = int(client.eval(_DELETE_UNLESS_NEWER, 3, *entry_keys(user_id, prefix), cutoff, latest))
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
    sha = script_sha(_DELETE_UNLESS_NEWER)
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
    return version_stamp(cutoff), not_after(now)[11:]


def _glob_escape(text: str) -> str:
    """`text` matched literally by a Redis glob (`SCAN MATCH`)."""
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)
