"""COPY's binary format (`bulk.copy_binary` and its fields): what the calculation's tables
receive reads back as the same values their text form gives."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import orjson
import pytest
from sqlalchemy import Column, Connection, MetaData, Table, select, text

from overnight_pipeline.storage.bulk import (
    BINARY_NULL,
    NUMERIC_OID,
    UUID_OID,
    VARCHAR_OID,
    binary_array,
    binary_date,
    binary_int2,
    binary_int4,
    binary_jsonb,
    binary_numeric,
    binary_text,
    binary_timestamptz,
    binary_uuid,
    copy_binary,
)
from overnight_pipeline.storage.models import recommendations_table
from overnight_pipeline.storage.recommendations import (
    RecommendationRow,
    recommendation_rows,
    write_recommendations,
)
from overnight_pipeline_tests.support.stored_results import insert_users

NUMBERS = ["0", "0.0000", "-0.0001", "3.5", "10", "12345678.1234", "99999.99995", "-7.25"]
MOMENTS = [
    datetime(2026, 11, 27, 6, 30, 0, 123456, tzinfo=UTC),
    datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
    datetime(2026, 3, 29, 2, 30, tzinfo=timezone(timedelta(hours=-5, minutes=-30))),
]


def test_binary_fields_read_back_as_their_text_does(pg_conn: Connection) -> None:
    """Each field kind against the server's parse of the same value's text."""
    pg_conn.execute(
        text(
            "CREATE TEMP TABLE binary_fields (u uuid, d date, i int, s smallint, t timestamptz,"
            " n numeric(16, 4), v varchar(16), j jsonb, ids uuid[], ns numeric(16, 4)[],"
            " vs varchar(16)[], e uuid[])"
        )
    )
    ids = [uuid.uuid4() for _ in range(3)]
    document = {"a": 'x\ty\nz\\"é', "n": [1, "2.50"]}
    rows = []
    expected = []
    for k, (number, moment) in enumerate(zip(NUMBERS, MOMENTS * 3, strict=False)):
        rows.append(
            b"".join(
                (
                    (12).to_bytes(2, "big"),
                    binary_uuid(str(ids[k % 3])),
                    binary_date(date(2026, 11, 27) - timedelta(days=k * 4000)),
                    binary_int4(-k),
                    binary_int2(k),
                    binary_timestamptz(moment),
                    binary_numeric(number),
                    binary_text("NY\tSE\\é"),
                    binary_jsonb(orjson.dumps(document)),
                    binary_array(UUID_OID, 3, b"".join(binary_uuid(u) for u in ids)),
                    binary_array(NUMERIC_OID, 2, binary_numeric(number) + binary_numeric("1")),
                    binary_array(VARCHAR_OID, 1, binary_text("a,b")),
                    binary_array(UUID_OID, 0, b""),
                )
            )
        )
        expected.append(
            (
                ids[k % 3],
                date(2026, 11, 27) - timedelta(days=k * 4000),
                -k,
                k,
                moment,
                Decimal(number).quantize(Decimal("0.0001")),
                "NY\tSE\\é",
                document,
                ids,
                [Decimal(number).quantize(Decimal("0.0001")), Decimal("1.0000")],
                ["a,b"],
                [],
            )
        )
    table_ = Table("binary_fields", MetaData(), Column("u"))
    columns = ["u", "d", "i", "s", "t", "n", "v", "j", "ids", "ns", "vs", "e"]
    copy_binary(pg_conn, table_, columns, rows)
    got = pg_conn.execute(text(f"SELECT {', '.join(columns)} FROM binary_fields")).all()
    assert [tuple(r) for r in got] == expected
    # The scale of each numeric is the column's, as from text.
    scales = pg_conn.execute(
        text("SELECT n::text, ns[1]::text FROM binary_fields ORDER BY i DESC")
    ).all()
    assert [s for s, _ in scales] == [str(Decimal(n).quantize(Decimal("0.0001"))) for n in NUMBERS]
    assert [a for _, a in scales] == [s for s, _ in scales]


def test_binary_refuses_what_is_not_a_uuid() -> None:
    assert binary_uuid(uuid.UUID(int=1)) == binary_uuid(str(uuid.UUID(int=1)))
    assert binary_uuid(uuid.UUID(int=1).hex) == binary_uuid(uuid.UUID(int=1))
    with pytest.raises(ValueError):
        binary_uuid("0000")
    with pytest.raises(ValueError):
        binary_timestamptz(datetime(2026, 11, 27))
    assert BINARY_NULL == b"\xff\xff\xff\xff"


def test_recommendation_rows_keep_nulls_and_every_character(db_conn: Connection) -> None:
    """A row without a criteria version and with odd characters in its documents: the same
    row on both databases, replaced by a newer one."""
    user = uuid.uuid4()
    insert_users(db_conn, [user])
    payload = {"k": 'a\tb\nc\\d"e', "é": ["\r"]}
    at = datetime(2026, 11, 27, 6, 30, 0, 5, tzinfo=UTC)
    row = RecommendationRow(
        user_id=user,
        market_date=date(2026, 11, 27),
        market="NYSE",
        correlation_id=uuid.uuid4(),
        generated_at=at,
        base_currency="USD",
        total_investable=Decimal("1234.5678"),
        criteria_version=None,
        payload=orjson.dumps(payload),
        portfolio=orjson.dumps([payload]),
    )
    write_recommendations(db_conn, recommendation_rows(db_conn.dialect.name, [row]))
    r = recommendations_table.c
    query = select(
        r.criteria_version, r.total_investable, r.payload, r.portfolio, r.generated_at
    ).where(r.user_id == user)
    assert db_conn.execute(query).one() == (None, Decimal("1234.5678"), payload, [payload], at)
    newer = RecommendationRow(
        **{**row.__dict__, "generated_at": at + timedelta(hours=1), "criteria_version": 7}
    )
    write_recommendations(db_conn, recommendation_rows(db_conn.dialect.name, [newer]))
    assert db_conn.execute(query).one()[0] == 7
