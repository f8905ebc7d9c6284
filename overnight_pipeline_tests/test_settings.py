from __future__ import annotations

import pytest

from overnight_pipeline.settings import SettingsError, load_settings, mask_url


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
        ("USER_BATCH_SIZE", "0"),
        ("DATABASE_URL", "postgresql+foo://root@127.0.0.1/x"),
        ("DATABASE_URL", "postgresql://root@127.0.0.1:99999/x"),
        ("DATABASE_URL", "postgresql://root@127.0.0.1:5432"),
        ("DATABASE_URL", "postgresql://root@127.0.0.1:abc/x"),
        ("REDIS_URL", "redis://127.0.0.1:notaport/0"),
        ("REDIS_URL", "redis://127.0.0.1:6379/abc"),
        ("REDIS_URL", "redis://127.0.0.1:6379/0?db=x"),
        ("REDIS_URL", "redis:///0"),
        ("DAGSTER_PG_URL", "postgresql://root@127.0.0.1:0/dagster"),
        ("RATES_URL", "ftp://rates"),
        ("PRICES_URL", "http://127.0.0.1:port/"),
        # Each passes a field-by-field regex, none passes Dagster's cron parser.
        ("OVERNIGHT_JOB_CRON", "0 4 * * 1-5L"),
        ("OVERNIGHT_JOB_CRON", "99 4 * * *"),
        ("OVERNIGHT_JOB_CRON", "0 4 31 2 *"),
        ("OVERNIGHT_JOB_CRON", "*/90 * * * *"),
        ("OVERNIGHT_JOB_CRON", "0 0 4 * * *"),
        ("OTEL_TRACES_EXPORTER", "zipkin"),
        ("OTEL_TRACES_EXPORTER", "console,jaeger"),
        ("OTEL_SDK_DISABLED", "yes"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "localhost:4318"),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team"),
        ("PROVIDER_RATE_LIMIT", "inf"),
        ("USER_SHARDS", "0"),
        ("USER_SHARDS", "65"),
        ("USER_SHARDS", "many"),
        ("OVERNIGHT_EXECUTOR", "dask"),
        ("CELERY_BROKER_URL", "amqp://guest@127.0.0.1//"),
        ("REPLAY_SAMPLE", "-1"),
    ],
)
def test_an_invalid_value_fails_naming_the_variable_and_value(monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as info:
        load_settings()
    (line,) = str(info.value).splitlines()[1:]
    assert line.strip().startswith(f"{name}: ")
    if value:
        assert repr(value) in line


def test_a_secret_or_a_password_is_never_shown(monkeypatch) -> None:
    monkeypatch.setenv("DASHBOARD_SECRET", "hunter2-short")
    monkeypatch.setenv("DATABASE_URL", "postgresql+nope://root:s3cr3t-pw@127.0.0.1/x")
    monkeypatch.setenv("REDIS_URL", "redis://:r3dis-pw@127.0.0.1:x/0")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization")
    with pytest.raises(SettingsError) as info:
        load_settings()
    text = str(info.value)
    for name in ("DASHBOARD_SECRET", "DATABASE_URL", "REDIS_URL", "OTEL_EXPORTER_OTLP_HEADERS"):
        assert f"\n  {name}: " in text
    for secret in ("hunter2", "s3cr3t-pw", "r3dis-pw", "authorization"):
        assert secret not in text
    assert "root:***@127.0.0.1" in text and "<13 characters, not shown>" in text


def test_masking_keeps_everything_but_the_password() -> None:
    assert mask_url("postgresql://u:p@ss@h:5/d") == "postgresql://u:***@h:5/d"
    assert mask_url("redis://:pw@h:6379/0") == "redis://:***@h:6379/0"
    assert mask_url("redis://h:6379/0") == "redis://h:6379/0"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("OVERNIGHT_JOB_CRON", "0 4 * * 1-5"),
        ("OVERNIGHT_JOB_CRON", "30 5 * * MON-FRI"),
        ("REDIS_URL", "redis://:pw@127.0.0.1:6380/15"),
        ("REDIS_URL", "unix:///run/redis.sock?db=2"),
        ("OTEL_TRACES_EXPORTER", "console,otlp"),
        ("OTEL_SDK_DISABLED", "TRUE"),
        ("OTEL_RESOURCE_ATTRIBUTES", "team=planner,env=prod"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", ""),
    ],
)
def test_valid_values_pass(monkeypatch, name, value) -> None:
    monkeypatch.setenv(name, value)
    load_settings()


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
