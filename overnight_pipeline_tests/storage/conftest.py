from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from overnight_pipeline_tests.support.databases import create_pg_database, drop_pg_database


@pytest.fixture(params=["postgresql", "sqlite"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """The URL of an empty database (no migration run yet), on PostgreSQL and on SQLite."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = create_pg_database("overnight_fresh")
    yield url
    drop_pg_database(url)
