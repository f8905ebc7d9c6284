"""Whether a served result predates its user's inputs: `inputsChangedAt` (BEHAVIOUR §6).

`overnight load` records each changed user in `user_changes` (PostgreSQL, the durable truth)
and, once committed, in a Redis marker `changed:{userId}` under the cache prefix holding the
change time in the cache's fixed-width UTC stamp (`2026-12-07T14:03:11.123456Z`, string order
= time order). The dashboard reads the marker in the MGET of the entry itself, so a cache
hit costs no database query; on the PostgreSQL path it reads the user's newest `changed_at`
(`newest_changes`, by the index on (user_id, changed_at)). Both paths give the same answer:
the change time when it is after the served `generatedAt` (or when nothing is served yet),
else null.

A marker never goes backwards (`mark_changed` keeps a newer one, atomically in Lua) and
lives 24 h from the change, longer than any entry generated before it (an entry lives 24 h
from its own generation), so a marker that expired can only have flagged entries that expired
too. Redis is not trusted: a marker that is not such a stamp, is not a real time, or is dated
after what an honest clock allows is ignored (the flag is null, never a 5xx), and a write
overwrites it. Only a time is stored: another user's marker, even copied over, shows no data.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from itertools import islice
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError
from sqlalchemy import Connection, bindparam, func, select
from sqlalchemy.dialects import postgresql

from overnight_pipeline.storage.cache import DEFAULT_CHUNK, DEFAULT_TTL_SECONDS, remaining_ttl
from overnight_pipeline.storage.cache_entries import CLOCK_SKEW, changed_key
from overnight_pipeline.storage.models import user_changes_table

_STAMP = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")

# KEYS: the marker. ARGV: stamp, ttl, latest (the newest stamp an honest writer can hold
# now). Keeps a stored marker that is a plausible stamp at least as new (returns 0); else
# writes (returns 1): garbage, another type or a marker dated in the future is overwritten.
_MARK_UNLESS_NEWER = """
local stored = redis.pcall('GET', KEYS[1])
if type(stored) == 'string'
  and string.match(stored, '^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%d%d%d%dZ$')
  and stored >= ARGV[1] and stored <= ARGV[3] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return 1
"""
_SHA = hashlib.sha1(_MARK_UNLESS_NEWER.encode(), usedforsecurity=False).hexdigest()


def stamp(moment: datetime) -> str:
    """The cache's fixed-width UTC stamp of `moment` (an aware datetime)."""
    if moment.tzinfo is None:
        raise ValueError(f"moment={moment!r} is naive: it must carry a timezone")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _latest(now: datetime) -> str:
    return stamp(now + CLOCK_SKEW)


def marker_stamp(raw: object, *, now: datetime) -> str | None:
    """A marker's stamp as read from Redis, or None when it is not one this project writes
    (not a stamp, not a real time, dated after `now` + the clock skew allowed)."""
    if not isinstance(raw, bytes) or _STAMP.fullmatch(raw) is None:
        return None
    text = raw.decode("ascii")
    if text > _latest(now):
        return None
    try:
        datetime.fromisoformat(text)  # the calendar: no 2026-02-30, no 25:00
    except ValueError:
        return None
    return text


def changed_after(change: str | None, generated: str | None) -> str | None:
    """`inputsChangedAt`: the change stamp when it is after the served result's `generated`
    stamp, or when nothing is served; else None."""
    if change is None or (generated is not None and change <= generated):
        return None
    return change


def mark_changed(
    client: redis.Redis,
    user_ids: Iterable[uuid.UUID],
    changed_at: datetime,
    *,
    prefix: str = "",
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
    chunk: int = DEFAULT_CHUNK,
    now: datetime | None = None,
) -> int:
    """Set each user's `changed:` marker to `changed_at` unless a newer one is there; one
    pipelined round trip per `chunk` users. The marker lives until `changed_at` + the TTL.
    Returns how many were written; Redis errors propagate."""
    if chunk <= 0:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    when = stamp(changed_at)
    ttl = remaining_ttl(changed_at, now=now, max_ttl=ttl_seconds)
    if ttl <= 0:
        return 0
    sha = client.script_load(_MARK_UNLESS_NEWER)
    written = 0
    it = iter(user_ids)
    while batch := list(islice(it, chunk)):
        latest = _latest(now or datetime.now(UTC))
        results = _mark_chunk(client, sha, batch, when, ttl, latest, prefix)
        if any(isinstance(r, NoScriptError) for r in results):
            client.script_load(_MARK_UNLESS_NEWER)  # flushed meanwhile; marking is idempotent
            results = _mark_chunk(client, sha, batch, when, ttl, latest, prefix)
        for r in results:
            if isinstance(r, Exception):
                raise r
        written += sum(1 for r in results if int(r) == 1)
    return written


def _mark_chunk(
    client: redis.Redis,
    sha: str,
    batch: Sequence[uuid.UUID],
    when: str,
    ttl: int,
    latest: str,
    prefix: str,
) -> list[Any]:
    with client.pipeline(transaction=False) as pipe:
        for user_id in batch:
            pipe.evalsha(sha, 1, changed_key(user_id, prefix), when, ttl, latest)
        return list(pipe.execute(raise_on_error=False))


async def restore_marker(
    client: aioredis.Redis,
    user_id: uuid.UUID | str,
    changed_at: datetime,
    *,
    prefix: str = "",
    ttl_seconds: int = DEFAULT_TTL_SECONDS,
) -> bool:
    """Put back a marker the dashboard found in PostgreSQL (Redis lost it, or `overnight
    load` could not write it), so the hits that follow its refill say the same."""
    ttl = remaining_ttl(changed_at, max_ttl=ttl_seconds)
    if ttl <= 0:
        return False
    args = (1, changed_key(user_id, prefix), stamp(changed_at), ttl, _latest(datetime.now(UTC)))
    try:
        result = await client.evalsha(_SHA, *args)
    except NoScriptError:
        await client.script_load(_MARK_UNLESS_NEWER)
        result = await client.evalsha(_SHA, *args)
    return int(result) == 1


_uc = user_changes_table.c
# Per user, the newest change through the (user_id, changed_at) index: one backward index
# probe each (max() of an indexed column is planned as ORDER BY ... DESC LIMIT 1).
_ids = (
    func.unnest(bindparam("user_ids", type_=postgresql.ARRAY(_uc.user_id.type)))
    .table_valued("user_id")
    .render_derived(name="ids")
)
_NEWEST_CHANGES = select(
    _ids.c.user_id,
    select(func.max(_uc.changed_at)).where(_uc.user_id == _ids.c.user_id).scalar_subquery(),
)


def newest_changes(conn: Connection, user_ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, datetime]:
    """When each user's inputs last changed (`user_changes`, processed or not: a result is
    compared by time); users never changed are absent. One statement on PostgreSQL."""
    if not user_ids:
        return {}
    if conn.dialect.name != "postgresql":
        found = {}
        for user_id in user_ids:
            when = conn.scalar(select(func.max(_uc.changed_at)).where(_uc.user_id == user_id))
            if when is not None:
                found[user_id] = when
        return found
    rows = conn.execute(_NEWEST_CHANGES, {"user_ids": list(user_ids)})
    return {u: when.astimezone(UTC) for u, when in rows if when is not None}
