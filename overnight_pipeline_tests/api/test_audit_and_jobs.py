"""`GET /api/audit/assets/{market}/{symbol}/calculations` and `GET /api/jobs`."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import Engine, insert
from starlette.testclient import TestClient

from dashboard_api.params import encode_cursor
from overnight_pipeline.storage.models import overnight_job_runs_table
from overnight_pipeline.storage.partitions import ensure_months
from overnight_pipeline.storage.queries import CalculationCursor
from overnight_pipeline_tests.api.conftest import bearer, token_for
from overnight_pipeline_tests.support.stored_results import insert_asset, insert_calculation

T0 = datetime(2026, 11, 1, 3, 0, tzinfo=UTC)


@pytest.fixture
def asset_with_calculations(pg_engine: Engine) -> dict[str, Any]:
    """One asset scored 5 times for `me` and 4 times for `other` on other nights."""
    symbol = f"KO{uuid.uuid4().hex[:6]}"
    me, other = uuid.uuid4(), uuid.uuid4()
    with pg_engine.begin() as conn:
        asset_id = insert_asset(conn, "NYSE", symbol)
        mine = [
            insert_calculation(
                conn,
                asset_id=asset_id,
                user_id=me,
                score=f"{10 + i}.5",
                calculated_at=T0 + timedelta(days=i),
            )
            for i in range(5)
        ]
        for i in range(4):
            insert_calculation(
                conn,
                asset_id=asset_id,
                user_id=other,
                score="99",
                calculated_at=T0 + timedelta(days=i, hours=1),
            )
    return {"symbol": symbol, "asset_id": asset_id, "me": me, "other": other, "mine": mine}


def _audit(client: TestClient, user: uuid.UUID, symbol: str, query: str = "") -> Any:
    return client.get(
        f"/api/audit/assets/NYSE/{symbol}/calculations{query}", headers=bearer(token_for(user))
    )


def test_audit_returns_only_the_callers_calculations_newest_first(
    client: TestClient, asset_with_calculations: dict[str, Any]
) -> None:
    w = asset_with_calculations
    response = _audit(client, w["me"], w["symbol"])
    assert response.status_code == 200
    body = response.json()
    assert body["asset"] == {"assetId": str(w["asset_id"]), "market": "NYSE", "symbol": w["symbol"]}
    assert [c["correlationId"] for c in body["data"]] == [str(c) for c in reversed(w["mine"])]
    assert [c["score"] for c in body["data"]] == [
        "14.5000",
        "13.5000",
        "12.5000",
        "11.5000",
        "10.5000",
    ]
    assert body["data"][0]["calculatedAt"] == "2026-11-05T03:00:00Z"
    assert body["nextCursor"] is None
    theirs = _audit(client, w["other"], w["symbol"]).json()["data"]
    assert len(theirs) == 4 and {c["score"] for c in theirs} == {"99.0000"}
    assert _audit(client, uuid.uuid4(), w["symbol"]).json()["data"] == []


def test_audit_pages_with_a_cursor_that_cannot_reach_other_users(
    client: TestClient, asset_with_calculations: dict[str, Any]
) -> None:
    w = asset_with_calculations
    first = _audit(client, w["me"], w["symbol"], "?limit=2").json()
    assert len(first["data"]) == 2 and first["nextCursor"]
    seen = [c["correlationId"] for c in first["data"]]
    cursor = first["nextCursor"]
    while cursor:
        page = _audit(client, w["me"], w["symbol"], f"?limit=2&cursor={cursor}").json()
        seen += [c["correlationId"] for c in page["data"]]
        cursor = page["nextCursor"]
    assert seen == [str(c) for c in reversed(w["mine"])]
    # A cursor built from another user's position still pages the caller's own rows.
    forged = encode_cursor(CalculationCursor(T0 + timedelta(days=10), uuid.uuid4(), w["other"]))
    page = _audit(client, w["me"], w["symbol"], f"?cursor={forged}").json()
    assert len(page["data"]) == 5 and "99.0000" not in {c["score"] for c in page["data"]}


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=1&limit=2", "limit"),
        ("?cursor=not-a-cursor", "cursor"),
        (
            "?cursor="
            + encode_cursor(CalculationCursor(T0, uuid.UUID(int=7), uuid.UUID(int=8)))[:-4],
            "cursor",
        ),
    ],
)
def test_audit_bad_parameters_are_400_naming_field_and_value(
    client: TestClient, asset_with_calculations: dict[str, Any], query: str, name: str
) -> None:
    response = _audit(
        client, asset_with_calculations["me"], asset_with_calculations["symbol"], query
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["detail"].startswith(f"{name}: ") and "got" in body["detail"]
    assert body["invalidParams"][0]["name"] == name


CURSOR = encode_cursor(CalculationCursor(T0, uuid.UUID(int=7), uuid.UUID(int=8)))


@pytest.mark.parametrize(
    "cursor",
    [
        CURSOR + "\n",
        CURSOR[:5] + "\n" + CURSOR[5:],
        "\n" + CURSOR,
        CURSOR + "\r",
        CURSOR + "\x00",
        "\t" + CURSOR,
        CURSOR[:-1],
        CURSOR[:-1] + "g",
        CURSOR[:-1] + "A",
        CURSOR.replace(".", ","),
        CURSOR.split(".")[0],
        "." + CURSOR.split(".")[1],
        "--1." + CURSOR.split(".")[1],
        "\u0661\u0662." + CURSOR.split(".")[1],  # Arabic-Indic digits
        "253402300800000000." + CURSOR.split(".")[1],  # after 9999-12-31T23:59:59.999999Z
        "-62135596800000001." + CURSOR.split(".")[1],  # before 0001-01-01T00:00:00Z
        "9" * 400 + "." + CURSOR.split(".")[1],
        "MTc2NDU2MTYwMDAwMDAwMC5hYmNk",  # base64
        "%ff%fe",
    ],
)
def test_audit_a_malformed_cursor_is_a_400_naming_it(
    client: TestClient, asset_with_calculations: dict[str, Any], cursor: str
) -> None:
    w = asset_with_calculations
    response = client.get(
        f"/api/audit/assets/NYSE/{w['symbol']}/calculations",
        params={"cursor": cursor},
        headers=bearer(token_for(w["me"])),
    )
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["invalidParams"][0]["name"] == "cursor"


@pytest.mark.parametrize(
    "at",
    [
        datetime.min.replace(tzinfo=UTC),
        datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
        datetime.max.replace(tzinfo=UTC),
    ],
)
def test_audit_cursors_at_the_calendars_ends_page_on(
    client: TestClient, asset_with_calculations: dict[str, Any], at: datetime
) -> None:
    w = asset_with_calculations
    cursor = encode_cursor(CalculationCursor(at, uuid.UUID(int=0), w["me"]))
    response = _audit(client, w["me"], w["symbol"], f"?cursor={cursor}")
    assert response.status_code == 200, response.text
    assert len(response.json()["data"]) == (5 if at.year == 9999 else 0)


def test_audit_unknown_asset_is_404(client: TestClient) -> None:
    response = _audit(client, uuid.uuid4(), "NOPE-" + uuid.uuid4().hex[:8])
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert "no asset" in response.json()["detail"]
    nul = client.get(
        "/api/audit/assets/NYSE/K%00O/calculations", headers=bearer(token_for(uuid.uuid4()))
    )
    assert nul.status_code == 400 and "symbol" in nul.json()["detail"]


@pytest.fixture
def job_runs(pg_engine: Engine) -> str:
    market = f"M{uuid.uuid4().hex[:6]}".upper()
    rows = [
        {
            "id": uuid.uuid4(),
            "job_type": "overnight",
            "status": status,
            "market": market,
            "market_date": date(2026, 11, 30),
            "started_at": T0 + timedelta(hours=h),
            "completed_at": T0 + timedelta(hours=h, minutes=3),
            "users_processed": 100 + h,
            "users_failed": 1 if status == "partial" else 0,
            "correlation_id": uuid.uuid4(),
            "metrics": {"process_users_ms": 812},
            "error_details": None,
        }
        for h, status in enumerate(["completed", "partial", "failed", "completed"])
    ]
    with pg_engine.begin() as conn:
        ensure_months(conn, [row["started_at"] for row in rows])
        conn.execute(insert(overnight_job_runs_table), rows)
    return market


def test_jobs_lists_runs_newest_first_filtered_by_market_and_status(
    client: TestClient, job_runs: str
) -> None:
    admin = bearer(token_for(uuid.uuid4(), admin=True))
    runs = client.get(f"/api/jobs?market={job_runs}", headers=admin).json()["data"]
    assert [r["usersProcessed"] for r in runs] == [103, 102, 101, 100]
    assert runs[0]["metrics"] == {"process_users_ms": 812} and runs[0]["market"] == job_runs
    assert set(runs[0]) >= {
        "jobType",
        "status",
        "startedAt",
        "completedAt",
        "correlationId",
        "usersFailed",
        "marketDate",
        "errorDetails",
    }
    partial = client.get(f"/api/jobs?market={job_runs}&status=partial", headers=admin).json()
    assert [(r["status"], r["usersFailed"]) for r in partial["data"]] == [("partial", 1)]
    limited = client.get(f"/api/jobs?market={job_runs}&limit=1", headers=admin).json()["data"]
    assert len(limited) == 1
    before = limited[0]["startedAt"]
    older = client.get(
        f"/api/jobs?market={job_runs}&before={before.replace('+', '%2B')}", headers=admin
    ).json()["data"]
    assert [r["usersProcessed"] for r in older] == [102, 101, 100]


@pytest.mark.parametrize(
    ("before", "runs"),
    [
        ("0001-01-01T00:00:00+14:00", []),
        ("0001-01-01T00:00:00Z", []),
        ("0000-12-31T23:00:00-14:00", []),
        ("9999-12-31T23:59:59-14:00", [103, 102, 101, 100]),
        ("9999-12-31T23:59:59.999999Z", [103, 102, 101, 100]),
        ("2026-11-01T05:00:00+02:00", []),  # 03:00Z: the first run is not before it
        ("2026-11-01T06:00:00+02:00", [100]),
        ("2026-11-01T03:00:00.0000001Z", [100]),  # past the microsecond: rounds up
        ("2026-11-01t04:00:00.5z", [101, 100]),
        ("2026-11-01 04:59:60Z", [101, 100]),  # a leap second: up to 05:00Z
        ("2026-11-01T03:00:00.000001Z", [100]),
        ("2026-11-01T03:00:00Z", []),
        ("2026-11-01T03:00+00:00", []),  # without seconds
        ("2026-11-01T03:01+00:00", [100]),
    ],
)
def test_jobs_before_at_any_time_and_offset_is_an_exact_bound(
    client: TestClient, job_runs: str, before: str, runs: list[int]
) -> None:
    response = client.get(
        "/api/jobs",
        params={"market": job_runs, "before": before},
        headers=bearer(token_for(uuid.uuid4(), admin=True)),
    )
    assert response.status_code == 200, response.text
    assert [r["usersProcessed"] for r in response.json()["data"]] == runs


@pytest.mark.parametrize(
    ("query", "name"),
    [
        ("?before=2026-11-30T00:00:00Z%0A", "before"),
        ("?before=2026-11-30T00:00:00%00Z", "before"),
        ("?before=2026-11-30%0000:00:00Z", "before"),
        ("?before=2026-11-30T00:00:00 Z", "before"),
        ("?before=2026-11-30T00:00:00%2B0000", "before"),
        ("?before=2026-11-30T24:00:00Z", "before"),
        ("?before=2026-11-30T00:00:00%2B00:60", "before"),
        ("?before=2026-11-30T00:00:00%2B24:00", "before"),
        ("?before=2026-02-30T00:00:00Z", "before"),
        ("?before=10000-01-01T00:00:00Z", "before"),
        ("?before=%EF%BC%92026-11-30T00:00:00Z", "before"),  # a fullwidth digit
        ("?market=NYSE%0A", "market"),
        ("?market=NY%0ASE", "market"),
        ("?status=completed%0A", "status"),
        ("?limit=1%0A", "limit"),
        ("?limit=-1", "limit"),
        ("?limit=" + "9" * 400, "limit"),
        ("?status=done", "status"),
        ("?limit=500", "limit"),
        ("?before=yesterday", "before"),
        ("?before=2026-11-30T00:00:00", "before"),
        ("?market=NYSE&market=B3", "market"),
    ],
)
def test_jobs_bad_filters_are_400(client: TestClient, query: str, name: str) -> None:
    response = client.get(f"/api/jobs{query}", headers=bearer(token_for(uuid.uuid4(), admin=True)))
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["invalidParams"][0]["name"] == name
