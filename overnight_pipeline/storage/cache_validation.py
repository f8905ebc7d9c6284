"""Checking a cache entry read from Redis against the contract (BEHAVIOUR §5).

Redis is not trusted (BEHAVIOUR §5). Readers check the whole entry (`validate_entry`) and treat a
failure as a miss.

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
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime

from cachetools import LRUCache

from overnight_pipeline.core.payloads import (
    NON_NEGATIVE_DECIMAL_RE,
    InvalidDocument,
    WirePortfolio,
    WireRecommendations,
    check_documents,
    parse_time,
)
from overnight_pipeline.storage.cache_entries import CachedEntry, latest_version, version_stamp

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


@dataclass(frozen=True)
class ValidEntry:
    """An entry that passed every check of the contract (`validate_entry`)."""

    recs: WireRecommendations
    portfolio: WirePortfolio
    total_investable: str


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
    if stamp != version[11:] and version_stamp(parse_time(stamp)) != version[11:]:
        raise InvalidDocument("sidecar: version is not the document's generatedAt")
    valid = ValidEntry(recs, portfolio, total)
    if memo is not None:
        memo.add(entry, _Validated(valid, version, user_key))
    return valid


def _check_not_future(version: str, now: datetime) -> None:
    latest = latest_version(now)
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
