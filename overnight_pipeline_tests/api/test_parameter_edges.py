"""Every query and path parameter of every route, at its type's edges (hypothesis).

Values: times in years 1 to 9999 (and 0) at any UTC offset, with leap seconds and fractions
past the microsecond; control characters; huge and negative integers; every cursor the
server can issue, the ones it did issue, and mutations of both (truncated, a character
flipped, a line feed inserted, base64 garbage). With PostgreSQL and Redis up nothing is a
5xx, and a refusal is a 400 problem naming a parameter that was sent. What is accepted is
answered exactly: a cursor pages on after its position, `before` bounds as written.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert
from starlette.testclient import TestClient

from dashboard_api.app import create_app
from dashboard_api.openapi import build_openapi
from dashboard_api.params import encode_cursor
from overnight_pipeline.core.audit import JOB_STATUSES
from overnight_pipeline.settings import load_settings
from overnight_pipeline.storage.models import overnight_job_runs_table
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.queries import CalculationCursor
from overnight_pipeline_tests.api.conftest import FAST, SECRET, bearer, token_for
from overnight_pipeline_tests.support.databases import REDIS_URL, redis_namespace
from overnight_pipeline_tests.support.stored_results import insert_asset, insert_calculation

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)
ME = uuid.uuid4()
RUNS = [T0 + timedelta(hours=h) for h in range(4)]  # started_at of the market's job runs
QUICK = settings(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def world(pg_url: str, pg_engine: Engine) -> Iterator[dict[str, Any]]:
    """One asset scored 4 times for ME (two at the same instant), 4 job runs of one market,
    the app, and the cursors it issues paging through ME's calculations one by one."""
    symbol = f"E{uuid.uuid4().hex[:8]}"
    market = f"M{uuid.uuid4().hex[:7]}".upper()
    with pg_engine.begin() as conn:
        asset_id = insert_asset(conn, "NYSE", symbol)
        calculations = [
            (
                at,
                insert_calculation(
                    conn, asset_id=asset_id, user_id=ME, score="1", calculated_at=at
                ),
            )
            for at in (T0, T0 + timedelta(days=1), T0 + timedelta(days=1), T0 + timedelta(days=2))
        ]
        ensure_months(conn, RUNS)
        conn.execute(
            insert(overnight_job_runs_table),
            [
                {
                    "id": uuid.uuid4(),
                    "job_type": "overnight",
                    "status": "completed",
                    "market": market,
                    "started_at": at,
                    "users_processed": 100 + i,
                    "users_failed": 0,
                    "correlation_id": uuid.uuid4(),
                }
                for i, at in enumerate(RUNS)
            ],
        )
    namespace = redis_namespace("test:edges")
    app_settings = load_settings(
        database_url=pg_url,
        redis_url=REDIS_URL,
        cache_prefix=next(namespace),
        dashboard_secret=SECRET,
    )
    with TestClient(create_app(app_settings, options=FAST)) as client:
        audit = f"/api/audit/assets/NYSE/{symbol}/calculations"
        headers = bearer(token_for(ME, admin=True))
        issued, cursor = [], None
        while True:
            page = client.get(audit, params={"limit": 1, "cursor": cursor}, headers=headers)
            cursor = page.json()["nextCursor"]
            if cursor is None:
                break
            issued.append(cursor)
        assert len(issued) == len(calculations) - 1
        yield {
            "client": client,
            "headers": headers,
            "symbol": symbol,
            "market": market,
            "calculations": calculations,
            "issued": issued,
        }
    next(namespace, None)


CONTROL = ["\n", "\r", "\x00", "\t", "\x7f", "\x1b", "\u2028", "\u202e", "\ufeff"]
EDGE_STRINGS = [
    " ",
    *CONTROL,
    "0",
    "-0",
    "-1",
    "+1",
    "1.0",
    "1e309",
    "NaN",
    "Infinity",
    "null",
    "\u0661",  # Arabic-Indic one
    "\uff11",  # fullwidth one
    str(2**63),
    "-" + str(2**63 + 1),
    "9" * 25,
    "9" * 400,
    "%",
    "%00",
    "..",
    "\u00e9" * 40,
]
EDGE_TEXT = st.one_of(st.sampled_from(EDGE_STRINGS), st.integers().map(str), st.text(max_size=24))
# Times at the calendar's ends with the widest offsets, leap seconds, long fractions.
EDGE_TIMES = [
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00-23:59",
    "0001-01-01T00:00:60+14:00",
    "0000-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999-23:59",
    "9999-12-31T23:59:60Z",
    "9999-12-31T23:59:59.9999999Z",
    "1970-01-01T00:00:00.000000000000000000001Z",
    "2026-11-01T03:00:00Z",
]


def mutations(value: str) -> list[str]:
    """`value` truncated at every length, with control characters inserted at its start,
    middle and end, a character flipped at each end and in the middle, doubled, base64'd."""
    found = [value[:i] for i in range(1, len(value))]
    for i in (0, len(value) // 2, len(value)):
        found += [value[:i] + c + value[i:] for c in CONTROL[:4]]
    for i in {0, len(value) // 2, len(value) - 1}:
        found += [value[:i] + c + value[i + 1 :] for c in ("g", "A", ".", "\u00e9")]
    found += [value.swapcase(), value + value, base64.b64encode(value.encode()).decode()]
    return found


def mutated(valid: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """A valid value truncated, with any character flipped or a control one inserted."""

    @st.composite
    def mutate(draw: st.DrawFn) -> str:
        value = draw(valid)
        i = draw(st.integers(0, len(value)))
        kind = draw(st.sampled_from(["truncate", "flip", "insert", "append", "twice"]))
        if kind == "truncate":
            return value[:i]
        if kind == "flip" and value:
            i = min(i, len(value) - 1)
            return value[:i] + draw(st.characters(exclude_categories=["Cs"])) + value[i + 1 :]
        if kind in ("insert", "append"):
            i = len(value) if kind == "append" else i
            return value[:i] + draw(st.sampled_from(CONTROL)) + value[i:]
        return value + value

    return mutate()


@st.composite
def rfc3339(draw: st.DrawFn, near: datetime | None = None) -> tuple[str, datetime, bool]:
    """(text, the aware time it names at whole microseconds, whether it is a hair past it:
    a leap second or digits beyond the microsecond)."""
    if near is not None:
        around = near.replace(tzinfo=None)
        naive = draw(st.datetimes(around - timedelta(hours=30), around + timedelta(hours=30)))
    else:
        ends = [datetime.min, datetime.min.replace(second=59), datetime.max]
        naive = draw(st.datetimes() | st.sampled_from(ends))
    widest = [0, 14 * 60, -14 * 60, 24 * 60 - 1, -(24 * 60 - 1)]
    minutes = draw(st.sampled_from(widest) | st.integers(-(24 * 60 - 1), 24 * 60 - 1))
    offset = timezone(timedelta(minutes=minutes))
    sign = "-" if minutes < 0 else "+"
    zone = draw(st.sampled_from(["Z", "z"])) if minutes == 0 else ""
    zone = zone or f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    leap = naive.second == 59 and naive.year < 9999 and draw(st.booleans())
    fraction = f"{naive.microsecond:06d}"
    extra = draw(st.sampled_from(["", "", "0", "000", "1", "5", "999"]))
    digits = fraction + extra if extra else draw(st.sampled_from([fraction.rstrip("0"), fraction]))
    at = naive.replace(tzinfo=offset)
    if leap:
        at = at.replace(microsecond=0) + timedelta(seconds=1) - timedelta(microseconds=1)
    seconds = "60" if leap else f"{naive.second:02d}"
    text = (
        f"{naive.date().isoformat()}{draw(st.sampled_from('Tt '))}"
        f"{naive.hour:02d}:{naive.minute:02d}:{seconds}" + (f".{digits}" if digits else "") + zone
    )
    # `at` is then the last microsecond before the bound: a stored time is below the bound
    # exactly when it is at or below `at`.
    past = leap or extra.strip("0") != ""
    return text, at, past


def issued_cursors(world: dict[str, Any]) -> st.SearchStrategy[str]:
    """What this server issued, and what it could issue for any position."""
    anywhere = st.builds(
        lambda at, cid: encode_cursor(CalculationCursor(at, cid, ME)),
        st.datetimes(timezones=st.just(UTC)),
        st.uuids(),
    )
    return st.one_of(st.sampled_from(world["issued"]), anywhere)


def values(world: dict[str, Any], name: str) -> st.SearchStrategy[str]:
    """Edge values for the parameter `name`: valid ones, mutations of them, anything."""
    valid: st.SearchStrategy[str]
    if name == "cursor":
        valid = issued_cursors(world)
        garbage = st.binary(max_size=40).map(lambda b: base64.urlsafe_b64encode(b).decode())
        return st.one_of(valid, mutated(valid), garbage, EDGE_TEXT)
    if name == "before":
        valid = rfc3339().map(lambda found: found[0])
    elif name == "limit":
        valid = st.integers(-2, 202).map(str)
    elif name == "status":
        valid = st.sampled_from(sorted(JOB_STATUSES))
    elif name == "market":
        valid = st.sampled_from(["NYSE", world["market"]])
    elif name == "symbol":
        valid = st.just(world["symbol"])
    else:
        valid = st.text(max_size=12)
    return st.one_of(valid, mutated(valid), EDGE_TEXT)


def operations() -> list[tuple[str, str, list[str], list[str]]]:
    """(method, path, path parameters, query parameters) of every documented operation."""
    found = []
    for path, item in build_openapi()["paths"].items():
        for method, operation in item.items():
            params = operation.get("parameters", [])
            found.append(
                (
                    method.upper(),
                    path,
                    [p["name"] for p in params if p["in"] == "path"],
                    [p["name"] for p in params if p["in"] == "query"],
                )
            )
    return found


OPERATIONS = operations()
EVERY_QUERY_PARAMETER = sorted({name for *_, query in OPERATIONS for name in query})


PARAMETERS = [
    (method, path, name)
    for method, path, path_names, query_names in OPERATIONS
    for name in (*path_names, *query_names)
]
ASCII_CONTROL = {chr(c) for c in (*range(0x20), 0x7F)}


def valid_values(world: dict[str, Any], name: str) -> list[str]:
    micro = timedelta(microseconds=1)
    return {
        "cursor": [
            *world["issued"],
            *(
                encode_cursor(CalculationCursor(at, uuid.UUID(int=n), ME))
                for n, at in enumerate(
                    [
                        datetime.min.replace(tzinfo=UTC),
                        datetime(1970, 1, 1, tzinfo=UTC) - micro,
                        datetime.max.replace(tzinfo=UTC),
                    ]
                )
            ),
        ],
        "before": EDGE_TIMES,
        "limit": ["1", "20", "100", "200"],
        "status": sorted(JOB_STATUSES),
        "market": ["NYSE", world["market"]],
        "symbol": [world["symbol"]],
    }[name]


def edge_values(world: dict[str, Any], name: str) -> list[str]:
    """The valid values, every edge string, and mutations of the valid values."""
    valid = valid_values(world, name)
    found = [*valid, *EDGE_STRINGS, *mutations(valid[0])]
    for value in valid[1:]:
        found += [value + c for c in CONTROL[:4]] + ["\n" + value, value[:-1]]
    return list(dict.fromkeys(found))


@pytest.mark.parametrize(("method", "path", "name"), PARAMETERS)
def test_every_parameter_at_its_edges_is_answered_or_refused_by_name(
    world: dict[str, Any], method: str, path: str, name: str
) -> None:
    """Each value in the one parameter, the others valid: below 500, and a value with a
    control character is never accepted."""
    client: TestClient = world["client"]
    in_path = "{" + name + "}" in path
    fixed = {"market": "NYSE", "symbol": world["symbol"]}
    for value in edge_values(world, name):
        url, params = path, {}
        if in_path:
            if value in ("", ".", ".."):  # no segment, or one the URL resolves away
                continue
            url = url.replace("{" + name + "}", quote(value, safe=""))
        else:
            params[name] = value
        for key, fill in fixed.items():
            url = url.replace("{" + key + "}", fill)
        response = client.request(
            method, url, params=params, headers=world["headers"], follow_redirects=False
        )
        shown = (method, url, params, response.text[:300])
        assert response.status_code < 500, shown
        if response.status_code == 400 or ASCII_CONTROL & set(value):
            assert response.status_code == 400, shown
            assert response.headers["content-type"] == "application/problem+json", shown
            problem = response.json()
            assert problem["status"] == 400 and problem["title"] and problem["detail"]
            assert problem["invalidParams"][0]["name"] == name, shown


def test_the_run_covers_every_query_parameter() -> None:
    assert EVERY_QUERY_PARAMETER == ["before", "cursor", "limit", "market", "status"]
    assert {path for _, path, *_ in OPERATIONS} >= {
        "/api/audit/assets/{market}/{symbol}/calculations",
        "/api/jobs",
    }


@st.composite
def edge_requests(draw: st.DrawFn, world: dict[str, Any]) -> tuple[str, str, list[Any], set[str]]:
    method, path, path_names, query_names = draw(st.sampled_from(OPERATIONS))
    for name in path_names:
        value = draw(values(world, name).filter(lambda v: v not in ("", ".", "..")))
        path = path.replace("{" + name + "}", quote(value, safe=""))
    params: list[tuple[str, str]] = []
    for name in query_names:
        if draw(st.integers(0, 3)):
            params.append((name, draw(values(world, name))))
    if draw(st.booleans()):  # another route's parameter, or this one's again
        name = draw(st.sampled_from(EVERY_QUERY_PARAMETER))
        params.append((name, draw(values(world, name))))
    return method, path, params, {*path_names, *(name for name, _ in params)}


@settings(QUICK, max_examples=200)
@given(data=st.data())
def test_no_parameter_value_reaches_a_5xx(world: dict[str, Any], data: st.DataObject) -> None:
    method, path, params, sent = data.draw(edge_requests(world))
    client: TestClient = world["client"]
    response = client.request(
        method, path, params=params, headers=world["headers"], follow_redirects=False
    )
    assert response.status_code < 500, (method, path, params, response.text[:300])
    if response.status_code == 400 and path.startswith("/api/"):
        assert response.headers["content-type"] == "application/problem+json"
        problem = response.json()
        assert problem["status"] == 400 and problem["title"] and problem["detail"]
        assert problem["invalidParams"][0]["name"] in sent, (params, problem)


@settings(QUICK, max_examples=100)
@given(data=st.data())
def test_every_cursor_the_server_can_issue_pages_on_from_its_position(
    world: dict[str, Any], data: st.DataObject
) -> None:
    at = data.draw(
        st.datetimes(timezones=st.just(UTC))
        | st.sampled_from([c[0] for c in world["calculations"]])
    )
    correlation = data.draw(st.uuids() | st.sampled_from([c[1] for c in world["calculations"]]))
    cursor = encode_cursor(CalculationCursor(at, correlation, uuid.uuid4()))
    client: TestClient = world["client"]
    response = client.get(
        f"/api/audit/assets/NYSE/{world['symbol']}/calculations",
        params={"cursor": cursor},
        headers=world["headers"],
    )
    assert response.status_code == 200, (cursor, response.text[:300])
    # Newest first, after (at, correlation, ME): the caller's id, never the cursor's.
    expected = sorted(
        (c for c in world["calculations"] if (c[0], c[1], ME) < (at, correlation, ME)), reverse=True
    )
    assert [c["correlationId"] for c in response.json()["data"]] == [str(c[1]) for c in expected]


@settings(QUICK, max_examples=100)
@given(data=st.data())
def test_before_at_any_time_and_offset_bounds_exactly_as_written(
    world: dict[str, Any], data: st.DataObject
) -> None:
    text, at, past = data.draw(rfc3339() | rfc3339(near=T0))
    client: TestClient = world["client"]
    response = client.get(
        "/api/jobs", params={"market": world["market"], "before": text}, headers=world["headers"]
    )
    assert response.status_code == 200, (text, response.text[:300])
    # Aware comparisons never overflow, whatever the year and offset.
    expected = [100 + i for i, run in enumerate(RUNS) if (run <= at if past else run < at)]
    assert [r["usersProcessed"] for r in response.json()["data"]] == expected[::-1], text
