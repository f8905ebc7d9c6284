from __future__ import annotations

import pytest
from sqlalchemy import inspect

from overnight_pipeline.storage.db import downgrade, make_engine, migrate
from overnight_pipeline.storage.models import Base
from overnight_pipeline_tests.conftest import create_pg_database, drop_pg_database

CONTRACT_TABLES = {
    "assets",
    "users",
    "asset_classes",
    "holdings",
    "criteria_versions",
    "exchange_rates",
    "asset_prices",
    "asset_fundamentals",
    "asset_scores",
    "recommendations",
    "calculation_events",
    "overnight_job_runs",
}


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = create_pg_database("overnight_migr")
    yield url
    drop_pg_database(url)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_migrations_upgrade_downgrade_upgrade_on_a_fresh_database(fresh_url: str) -> None:
    migrate(fresh_url)
    tables = _tables(fresh_url)
    assert CONTRACT_TABLES <= tables
    assert tables == set(Base.metadata.tables)
    downgrade(fresh_url, "base")
    assert _tables(fresh_url) == set()
    migrate(fresh_url)
    assert _tables(fresh_url) == set(Base.metadata.tables)


def test_migrations_match_the_models(pg_url: str) -> None:
    """Autogenerate finds nothing to add: the migrations and the typed models agree."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    engine = make_engine(pg_url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diff == []


def test_event_payloads_use_lz4_on_postgresql(pg_engine) -> None:
    with pg_engine.connect() as conn:
        method = conn.exec_driver_sql(
            "SELECT attcompression FROM pg_attribute WHERE attrelid = 'calculation_events'::regclass"
            " AND attname = 'payload'"
        ).scalar()
    assert method == "l"
