"""Column types that behave the same on PostgreSQL and on SQLite."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import JSON, BigInteger, DateTime, Integer, Numeric, String, Text, Uuid
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC on PostgreSQL; exact text on SQLite, whose NUMERIC would round through float."""

    impl = Numeric
    cache_ok = True

    def __init__(self, precision: int = 28, scale: int = 10) -> None:
        super().__init__(precision=precision, scale=scale, asdecimal=True)
        self.precision = precision
        self.scale = scale

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(Text())
        return dialect.type_descriptor(Numeric(self.precision, self.scale, asdecimal=True))

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        value = Decimal(value) if not isinstance(value, Decimal) else value
        if not value.is_finite():
            raise ValueError(f"{value} is not a finite decimal")
        if dialect.name == "sqlite":
            return format(value, "f")
        return value

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        if dialect.driver == "psycopg":
            return None  # psycopg hands back Decimal: no call per value (a batch reads 60,000)
        return super().result_processor(dialect, coltype)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return value if isinstance(value, Decimal) else Decimal(str(value))


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC timestamps; SQLite hands back naive values, re-marked as UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: timestamps must carry a timezone")
        return value.astimezone(UTC)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stamp: datetime = value
        return stamp.replace(tzinfo=UTC) if stamp.tzinfo is None else stamp.astimezone(UTC)


# JSONB (binary, indexable, lz4-compressible) on PostgreSQL, JSON text elsewhere.
Document = JSON().with_variant(JSONB(), "postgresql")
# SQLite only auto-increments INTEGER PRIMARY KEY.
BigId = BigInteger().with_variant(Integer(), "sqlite")
# The asset-X index's parallel arrays (`models.CalculationAsset`): uuid[] and numeric[] on
# PostgreSQL; JSON arrays elsewhere, of each id's 32 hex digits (what `Uuid` stores on SQLite,
# so an element compares with a bound id) and of each score's exact decimal text.
IdArray = ARRAY(Uuid()).with_variant(JSON(), "sqlite")
ScoreArray = ARRAY(Numeric(16, 4)).with_variant(JSON(), "sqlite")
TextArray = ARRAY(String(16)).with_variant(JSON(), "sqlite")
