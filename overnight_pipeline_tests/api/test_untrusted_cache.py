"""Redis is not trusted (BEHAVIOUR §5): malformed entries written straight into the real Redis.

Hypothesis builds each bad entry from a valid one (wrong types, missing and unknown fields,
another user's documents, bad decimals, NaN/Infinity/negative totals, bad dates, unknown
currencies, non-JSON bytes, huge values, garbage or future-dated version keys). Every one
must end the same way: 200, `fromCache: false`, the PostgreSQL row's content, the rejection
logged, and the entry healed (read back from Redis, it passes the contract and is the user's).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

from dashboard_api.auth import COOKIE_NAME
from dashboard_api.services import ApiOptions
from overnight_pipeline.core.payloads import InvalidDocument
from overnight_pipeline.storage.cache import get_entry
from overnight_pipeline.storage.cache_entries import (
    entry_version,
    portfolio_key,
    recs_key,
    version_key,
)
from overnight_pipeline.storage.cache_validation import ValidatedEntries, validate_entry
from overnight_pipeline_tests.api.conftest import bearer, token_for
from overnight_pipeline_tests.support.stored_results import Planner, planner

Doc = dict[str, Any]
Path = tuple[str | int, ...]
# Fields that may be null; every other field is required and typed.
NULLABLE = {"topContributor", "pricesAsOf", "ratesAsOf", "criteriaVersion"}
DECIMALS = {
    "score",
    "amount",
    "allocationGap",
    "totalValue",
    "currentPercent",
    "targetMin",
    "targetMax",
}
NON_NEGATIVE = {"amount", "totalValue", "currentPercent", "targetMin", "targetMax"}
TIMES = {"generatedAt", "pricesAsOf", "ratesAsOf"}
CURRENCY_FIELDS = {"currency", "baseCurrency"}
BAD_DECIMALS = [
    "NaN",
    "nan",
    "Infinity",
    "-Infinity",
    "sNaN",
    "1e3",
    "1E+3",
    "",
    " 1",
    "1 ",
    "0x1F",
    "1,5",
    "+1",
    "1.",
    ".5",
    "01",
    "1" * 19,
    "0." + "1" * 11,
    "1/2",
    "١",
]
BAD_NON_NEGATIVE = ["-5", "-0.01", "-1000000"]
BAD_PERCENT = ["100.01", "250", "-1"]
BAD_TIMES = [
    "2026-02-30T00:00:00Z",
    "2026-13-01T00:00:00Z",
    "2026-11-30T24:00:00Z",
    "2026-11-30",
    "2026-11-30T09:30:00",
    "yesterday",
    "",
    "2026-11-30 09:30:00Z",
    "2026-11-30T09:30:00+25:00",
    "99999-01-01T00:00:00Z",
]
BAD_CURRENCIES = ["ZZZ", "QQQ", "usd", "US", "USDD", "", "XYZ", "U$D", "ＵＳＤ"]
BAD_SIDECARS = [
    b"",
    b"garbage",
    b"zzzzzzzzzz|zzzz",
    b"\xff\xfe\x00",
    b"2099-01-01|2099-01-01T00:00:00.000000Z|20000.0000",
]


def leaves(doc: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    """Every field's path (the allocations mapping's keys are data, not fields)."""
    if isinstance(doc, dict) and path[-1:] != ("allocations",):
        for key, value in doc.items():
            yield from leaves(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from leaves(value, (*path, i))
    if path:
        yield path, doc


def field_dicts(doc: Any, path: Path = ()) -> Iterator[Path]:
    if isinstance(doc, dict) and path[-1:] != ("allocations",):
        yield path
        for key, value in doc.items():
            yield from field_dicts(value, (*path, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            yield from field_dicts(value, (*path, i))


def name_of(path: Path) -> str:
    named = [p for p in path if isinstance(p, str)]
    return named[-1] if named else ""


def put(doc: Any, path: Path, value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, list):
        assert isinstance(head, int)
        return [put(v, rest, value) if i == head else v for i, v in enumerate(doc)]
    return {**doc, head: put(doc[head], rest, value) if rest else value}


def drop(doc: Any, path: Path) -> Any:
    if len(path) == 1:
        return {k: v for k, v in doc.items() if k != path[0]}
    head = path[0]
    if isinstance(doc, list):
        return [drop(v, path[1:]) if i == head else v for i, v in enumerate(doc)]
    return {**doc, head: drop(doc[head], path[1:])}


def kind(value: Any) -> str:
    return type(value).__name__


JSON_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "NoneType": st.none(),
    "bool": st.booleans(),
    "int": st.integers(-(10**30), 10**30),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    "str": st.text(max_size=20),
    "list": st.lists(st.integers(), max_size=3),
    "dict": st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
}


@st.composite
def wrong_type(draw: st.DrawFn, doc: Doc) -> Doc:
    path, value = draw(st.sampled_from(list(leaves(doc))))
    allowed = {kind(value)} | ({"NoneType", "str"} if name_of(path) in NULLABLE else set())
    if name_of(path) == "criteriaCount" or name_of(path) == "assetCount":
        allowed.add("int")
    other = draw(st.sampled_from(sorted(set(JSON_VALUES) - allowed)))
    return put(doc, path, draw(JSON_VALUES[other]))


@st.composite
def missing_or_unknown_field(draw: st.DrawFn, doc: Doc) -> Doc:
    if draw(st.booleans()):
        at = draw(st.sampled_from(list(field_dicts(doc))))
        name = draw(st.text(min_size=1, max_size=10).filter(lambda k: k not in {"x"} | set(doc)))
        target = doc
        for p in at:
            target = target[p]
        if name in target:
            name += "_extra"
        return put(doc, (*at, name), draw(JSON_VALUES["int"]))
    paths = [
        p
        for p, _ in leaves(doc)
        if isinstance(p[-1], str) and p[:-1] != ("allocations",) and "allocations" not in p[-2:-1]
    ]
    return drop(doc, draw(st.sampled_from(paths)))


@st.composite
def bad_value(draw: st.DrawFn, doc: Doc) -> Doc:
    """A value of the right JSON type but outside the contract's format or range."""
    choices: list[tuple[Path, list[Any]]] = []
    for path, value in leaves(doc):
        name = name_of(path)
        if name in DECIMALS or (path[-2:-1] == ("allocations",) and isinstance(value, str)):
            bad = BAD_DECIMALS + (BAD_NON_NEGATIVE if name in NON_NEGATIVE else [])
            if name in {"currentPercent", "targetMin", "targetMax"} or (
                path[-2:-1] == ("allocations",)
            ):
                bad = bad + BAD_NON_NEGATIVE + BAD_PERCENT
            choices.append((path, bad))
        elif name in TIMES:
            choices.append((path, BAD_TIMES))
        elif name in CURRENCY_FIELDS:
            choices.append((path, BAD_CURRENCIES))
        elif name == "schemaVersion":
            choices.append((path, [1, 3, "2", True, None, 2**70]))
        elif name in {"criteriaCount", "assetCount"}:
            choices.append((path, [-1, 10**7, 10**400]))
        elif name in {"symbol", "assetId", "className"}:
            choices.append((path, ["", "x" * 2_000_000]))
    path, bad = draw(st.sampled_from(choices))
    return put(doc, path, draw(st.sampled_from(bad)))


def documents(p: Planner) -> tuple[Doc, Doc]:
    return orjson.loads(p.recs_json), orjson.loads(p.portfolio_json)


@st.composite
def bad_entries(draw: st.DrawFn, p: Planner, other: Planner) -> tuple[bytes, bytes, bytes]:
    """(recs, portfolio, sidecar) bytes of an entry that breaks the contract somewhere."""
    recs, portfolio = documents(p)
    sidecar = (entry_version(p.market_date, p.generated_at) + "|20000.0000").encode()
    case = draw(st.sampled_from(["recs", "portfolio", "owner", "bytes", "sidecar", "huge"]))
    if case in {"recs", "portfolio"}:
        how = draw(st.sampled_from([wrong_type, missing_or_unknown_field, bad_value]))
        if case == "recs":
            recs = draw(how(recs))
        else:
            portfolio = draw(how(portfolio))
    elif case == "owner":
        theirs_recs, theirs_portfolio = documents(other)
        which = draw(
            st.sampled_from(
                [
                    "their portfolio",
                    "their portfolio, same total",
                    "their recs",
                    "uppercase",
                    "random",
                ]
            )
        )
        if which == "their portfolio":
            portfolio = theirs_portfolio
        elif which == "their portfolio, same total":
            portfolio = {**theirs_portfolio, "totalValue": portfolio["totalValue"]}
        elif which == "their recs":
            recs = theirs_recs
        else:
            owner = str(p.user_id).upper() if which == "uppercase" else str(uuid.uuid4())
            recs = {**recs, "userId": owner}
    elif case == "bytes":
        junk = draw(
            st.binary(max_size=200)
            | st.sampled_from([b"NaN", b'[1, "x", null]', b"{" * 100_000, b"null"])
        )
        if draw(st.booleans()):
            return junk, dumps(portfolio), sidecar
        return dumps(recs), junk, sidecar
    elif case == "sidecar":
        stamp = entry_version(p.market_date, p.generated_at)
        sidecar = draw(
            st.sampled_from(
                [
                    *BAD_SIDECARS,
                    stamp.encode() + b"|",
                    stamp.encode() + b"|-5",
                    stamp.encode() + b"|NaN",
                    stamp.encode() + b"|1e3",
                    entry_version(p.market_date, p.generated_at + timedelta(seconds=1)).encode()
                    + b"|20000.0000",
                ]
            )
        )
    else:
        recs = {**recs, "recommendations": recs["recommendations"] * 5_000}
    return dumps(recs), dumps(portfolio), sidecar


def dumps(doc: Any) -> bytes:
    """JSON as a careless writer might produce it (ints beyond 64 bits included)."""
    return json.dumps(doc, separators=(",", ":")).encode()


def plant(client: redis.Redis, prefix: str, user: uuid.UUID, bad: tuple[bytes, ...]) -> None:
    recs, portfolio, sidecar = bad
    with client.pipeline() as pipe:
        pipe.set(recs_key(user, prefix), recs, ex=86_400)
        pipe.set(portfolio_key(user, prefix), portfolio, ex=86_400)
        pipe.set(version_key(user, prefix), sidecar, ex=86_400)
        pipe.execute()


def assert_healed(client: redis.Redis, prefix: str, p: Planner) -> None:
    """Read back from Redis: a valid entry of this user, with the PostgreSQL row's content."""
    found = get_entry(client, p.user_id, prefix=prefix)
    assert found is not None, "the refill did not put the entry back"
    valid = validate_entry(found, str(p.user_id), now=datetime.now(UTC))
    assert valid.recs["userId"] == valid.portfolio["userId"] == str(p.user_id)
    assert valid.recs == orjson.loads(p.recs_json)
    assert valid.portfolio == orjson.loads(p.portfolio_json)
    assert valid.total_investable == "20000.0000"


# These tests are about what an entry holds, not about Redis failing: a deadline long enough
# that a busy machine never trips the breaker (the read would then be skipped, not rejected).
PATIENT = ApiOptions(redis_connect_timeout=0.5, redis_timeout=2.0, redis_cooldown=0.3)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(PATIENT)


@pytest.fixture
def victim(new_user: Callable[..., Planner]) -> Planner:
    return new_user(hours_ago=3)


@pytest.fixture
def other() -> Planner:
    return planner(uuid.uuid4(), generated_at=datetime.now(UTC) - timedelta(hours=1), seed=7)


FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
    database=None,
)


@FUZZ
@given(data=st.data())
def test_any_bad_entry_is_a_miss_served_from_postgres_and_healed(
    data: st.DataObject,
    client: TestClient,
    victim: Planner,
    other: Planner,
    sync_redis: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = data.draw(bad_entries(victim, other))
    plant(sync_redis, redis_prefix, victim.user_id, bad)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="dashboard_api"):
        response = client.get("/api/dashboard", headers=bearer(token_for(victim.user_id)))
    assert response.status_code == 200, response.text
    recs = orjson.loads(victim.recs_json)
    assert response.json() == {
        "data": {
            "recommendations": recs["recommendations"],
            "totalInvestable": "20000.00",
            "baseCurrency": "USD",
            "dataFreshness": recs["generatedAt"],
            "fromCache": False,
            "inputsChangedAt": None,
        }
    }
    assert any("cache entry rejected" in r.getMessage() for r in caplog.records)
    assert_healed(sync_redis, redis_prefix, victim)


@settings(FUZZ, max_examples=40)
@given(data=st.data())
def test_the_page_never_fails_on_a_bad_entry_and_shows_the_users_own_data(
    data: st.DataObject,
    client: TestClient,
    victim: Planner,
    other: Planner,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    bad = data.draw(bad_entries(victim, other))
    plant(sync_redis, redis_prefix, victim.user_id, bad)
    client.cookies.set(COOKIE_NAME, token_for(victim.user_id))
    served = client.get("/", follow_redirects=False)
    assert served.status_code == 200, served.text[:300]
    assert "served from the database" in served.text
    assert f"Portfolio value ${Decimal(victim.portfolio.total_value):,.2f} " in served.text
    assert f"Portfolio value ${Decimal(other.portfolio.total_value):,.2f} " not in served.text
    assert_healed(sync_redis, redis_prefix, victim)
    healed = client.get("/", follow_redirects=False)
    assert "served from cache" in healed.text
    # The same page, word for word, as the healed entry gives.
    assert served.text.replace("served from the database", "served from cache") == healed.text


def test_keys_of_the_wrong_redis_type_are_a_miss_and_are_replaced(
    client: TestClient, victim: Planner, sync_redis: redis.Redis, redis_prefix: str
) -> None:
    for key in (recs_key(victim.user_id, redis_prefix), version_key(victim.user_id, redis_prefix)):
        sync_redis.hset(key, "x", "1")
    sync_redis.rpush(portfolio_key(victim.user_id, redis_prefix), "x")
    response = client.get("/api/dashboard", headers=bearer(token_for(victim.user_id)))
    assert response.status_code == 200 and response.json()["data"]["fromCache"] is False
    assert_healed(sync_redis, redis_prefix, victim)


def test_a_version_1_entry_is_a_miss_and_is_replaced_by_version_2(
    client: TestClient, victim: Planner, sync_redis: redis.Redis, redis_prefix: str
) -> None:
    recs, portfolio = documents(victim)
    old = (
        {**recs, "schemaVersion": 1},
        {k: v for k, v in {**portfolio, "schemaVersion": 1}.items() if k != "userId"},
    )
    sidecar = (entry_version(victim.market_date, victim.generated_at) + "|20000.0000").encode()
    plant(sync_redis, redis_prefix, victim.user_id, (*map(orjson.dumps, old), sidecar))
    response = client.get("/api/dashboard", headers=bearer(token_for(victim.user_id)))
    assert response.json()["data"]["fromCache"] is False
    assert_healed(sync_redis, redis_prefix, victim)
    again = client.get("/api/dashboard", headers=bearer(token_for(victim.user_id)))
    assert again.json()["data"]["fromCache"] is True


def test_a_user_without_results_gets_the_bad_entry_evicted(
    client: TestClient,
    new_user: Callable[..., Planner],
    other: Planner,
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    nobody = new_user(persisted=False)
    recs, portfolio = documents(other)
    sidecar = (entry_version(other.market_date, other.generated_at) + "|20000.0000").encode()
    plant(sync_redis, redis_prefix, nobody.user_id, (dumps(recs), dumps(portfolio), sidecar))
    response = client.get("/api/dashboard", headers=bearer(token_for(nobody.user_id)))
    assert response.status_code == 200
    assert response.json()["data"]["recommendations"] == []
    assert get_entry(sync_redis, nobody.user_id, prefix=redis_prefix) is None


# The memo of validated entries (storage.cache_validation.ValidatedEntries) --------------


def rejected_reads(client: TestClient) -> float:
    """`dashboard_cache_reads_total{result="rejected"}` of the client's app."""
    registry = client.app.metrics.registry  # type: ignore[attr-defined]
    value = registry.get_sample_value("dashboard_cache_reads_total", {"result": "rejected"})
    return value or 0.0


def memo_of(client: TestClient) -> ValidatedEntries:
    memo: ValidatedEntries = client.app_state["services"].dashboard.validated
    return memo


@pytest.mark.parametrize(
    ("original", "tampered"),
    [
        (b'"baseCurrency":"USD"', b'"baseCurrency":"USX"'),  # not ISO 4217
        (b'"schemaVersion":2', b'"schemaVersion":3'),
        (b'"amount":"', b'"amount":"-'),  # a negative amount
        (b'"recommendations":[{', b'"recommendations":[['),  # not JSON any more
    ],
)
def test_an_entry_tampered_by_one_character_after_it_was_validated_is_rejected_and_healed(
    original: bytes,
    tampered: bytes,
    client: TestClient,
    victim: Planner,
    cache: Callable[..., None],
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    cache(victim)
    headers = bearer(token_for(victim.user_id))
    for _ in range(2):  # validated in full, then served from the memo
        assert client.get("/api/dashboard", headers=headers).json()["data"]["fromCache"] is True
    assert len(memo_of(client)) == 1
    key = recs_key(victim.user_id, redis_prefix)
    stored = sync_redis.get(key)
    assert isinstance(stored, bytes) and stored.count(original) >= 1
    changed = stored.replace(original, tampered, 1)
    assert len(changed) - len(stored) == len(tampered) - len(original) <= 1
    sync_redis.set(key, changed, keepttl=True)
    rejected_before = rejected_reads(client)

    response = client.get("/api/dashboard", headers=headers)
    assert response.status_code == 200 and response.json()["data"]["fromCache"] is False
    assert rejected_reads(client) == rejected_before + 1
    assert_healed(sync_redis, redis_prefix, victim)
    healed = client.get("/api/dashboard", headers=headers)
    assert healed.json()["data"]["fromCache"] is True
    assert healed.json()["data"]["recommendations"] == response.json()["data"]["recommendations"]


def test_the_memo_never_serves_one_users_validated_entry_to_another(
    client: TestClient,
    new_user: Callable[..., Planner],
    cache: Callable[..., None],
    sync_redis: redis.Redis,
    redis_prefix: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    alice, bob = new_user(seed=1), new_user(seed=2)
    cache(alice)
    as_alice, as_bob = bearer(token_for(alice.user_id)), bearer(token_for(bob.user_id))
    first = client.get("/api/dashboard", headers=as_alice).json()["data"]
    assert first["fromCache"] is True
    assert len(memo_of(client)) == 1
    # Alice's exact bytes, already validated by this process, under Bob's keys.
    theirs = [
        sync_redis.get(k(alice.user_id, redis_prefix))
        for k in (recs_key, portfolio_key, version_key)
    ]
    plant(sync_redis, redis_prefix, bob.user_id, tuple(v for v in theirs if isinstance(v, bytes)))

    with caplog.at_level(logging.WARNING, logger="dashboard_api"):
        served = client.get("/api/dashboard", headers=as_bob).json()["data"]
    assert served["fromCache"] is False
    bob_recs = orjson.loads(bob.recs_json)
    assert served["recommendations"] == bob_recs["recommendations"]
    assert served["recommendations"] != first["recommendations"]
    assert any("userId is another user's" in r.getMessage() for r in caplog.records)
    assert_healed(sync_redis, redis_prefix, bob)
    # Alice still gets hers from the cache, and Bob now his own.
    assert client.get("/api/dashboard", headers=as_alice).json()["data"] == first
    again = client.get("/api/dashboard", headers=as_bob).json()["data"]
    assert again["fromCache"] is True and again["recommendations"] == bob_recs["recommendations"]


def test_a_remembered_entry_is_still_refused_when_its_version_is_in_the_future(
    client: TestClient,
    victim: Planner,
    cache: Callable[..., None],
    sync_redis: redis.Redis,
    redis_prefix: str,
) -> None:
    cache(victim)
    headers = bearer(token_for(victim.user_id))
    assert client.get("/api/dashboard", headers=headers).json()["data"]["fromCache"] is True
    found = get_entry(sync_redis, victim.user_id, prefix=redis_prefix)
    assert found is not None
    memo = memo_of(client)
    assert memo.get(found) is not None
    # The clock is checked on every use: the same bytes seen from a day earlier are refused.
    earlier = victim.generated_at - timedelta(days=1)
    with pytest.raises(InvalidDocument, match="future"):
        validate_entry(found, str(victim.user_id), now=earlier, memo=memo)
    valid = validate_entry(found, str(victim.user_id), now=datetime.now(UTC), memo=memo)
    assert valid.recs["userId"] == str(victim.user_id)
