from __future__ import annotations

import pytest

from overnight_pipeline.settings import SettingsError, load_settings


def test_defaults_need_no_environment(monkeypatch) -> None:
    for name in ("DATABASE_URL", "REDIS_URL", "DAGSTER_PG_URL", "MARKET_DATA", "CACHE_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    s = load_settings()
    assert s.database_url.startswith("sqlite:///") and s.database_url.endswith(".data/overnight.db")
    assert s.redis_url == "redis://127.0.0.1:6379/0"
    assert s.market_data == "synthetic" and s.dagster_pg_url is None and s.cache_prefix == ""
    assert s.user_batch_size == 1000 and s.provider_batch_size == 50


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "mysql://x"),
        ("REDIS_URL", "http://localhost"),
        ("DAGSTER_PG_URL", "sqlite:///x.db"),
        ("MARKET_DATA", "bloomberg"),
        ("OVERNIGHT_JOB_CRON", "every night"),
        ("DASHBOARD_SECRET", "short"),
        ("USER_BATCH_SIZE", "0"),
    ],
)
def test_an_invalid_value_fails_naming_the_variable_and_value(monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    assert name in str(info.value) and repr(value) in str(info.value)


def test_http_market_data_needs_both_urls(monkeypatch) -> None:
    monkeypatch.setenv("MARKET_DATA", "http")
    monkeypatch.setenv("RATES_URL", "http://127.0.0.1:8080")
    with pytest.raises(SettingsError, match="PRICES_URL"):
        load_settings()


def test_dagster_url_is_given_the_psycopg2_driver(monkeypatch) -> None:
    monkeypatch.setenv("DAGSTER_PG_URL", "postgresql://root@127.0.0.1:5432/dagster")
    assert load_settings().dagster_pg_url == "postgresql+psycopg2://root@127.0.0.1:5432/dagster"


def test_app_url_uses_psycopg3(monkeypatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://root@127.0.0.1/app")
    assert load_settings().database_url == "postgresql+psycopg://root@127.0.0.1/app"
