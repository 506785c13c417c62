"""The production profile's settings: pure, from a database URL and a Redis URL."""

from __future__ import annotations

import pytest

from infra.production.settings import (
    ProductionSettingsError,
    database_connection_url,
    redis_url,
    server_settings,
)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("postgresql://prefect:secret@db:5432/prefect", "postgresql+asyncpg://prefect:secret@db:5432/prefect"),
        ("postgres://prefect@db/prefect", "postgresql+asyncpg://prefect@db/prefect"),
        ("postgresql+asyncpg://prefect@db:5433/prefect", "postgresql+asyncpg://prefect@db:5433/prefect"),
        ("  postgresql://u@h/d?sslmode=require ", "postgresql+asyncpg://u@h/d?sslmode=require"),
    ],
)
def test_postgres_urls_become_asyncpg_urls(given, expected):
    assert database_connection_url(given) == expected


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("sqlite+aiosqlite:///prefect.db", "must be a PostgreSQL URL"),
        ("mysql://u@h/d", "got scheme 'mysql'"),
        ("db-host:5432/prefect", "must be a PostgreSQL URL"),
        ("postgresql://prefect:secret@db:5432", "must name a host and a database"),
        ("postgresql:///prefect", "must name a host and a database"),
    ],
)
def test_unusable_database_urls_are_refused_saying_what_would_do(given, message):
    with pytest.raises(ProductionSettingsError, match=message) as refused:
        database_connection_url(given)
    assert "secret" not in str(refused.value)  # the password is never echoed


@pytest.mark.parametrize(
    ("given", "ok"),
    [
        ("redis://redis:6379/0", True),
        ("rediss://user:pw@redis:6380/2", True),
        ("redis+sentinel://s1:26379,s2:26379/mymaster", True),
        ("http://redis:6379", False),
        ("redis://", False),
        ("redis-host:6379", False),
    ],
)
def test_redis_urls(given, ok):
    if ok:
        assert redis_url(given) == given
    else:
        with pytest.raises(ProductionSettingsError, match="--redis-url"):
            redis_url(given)


def test_server_settings_put_state_in_postgres_and_everything_shared_in_redis():
    settings = server_settings("postgres://prefect@db/prefect", "redis://redis:6379/3")

    assert settings["PREFECT_API_DATABASE_CONNECTION_URL"] == "postgresql+asyncpg://prefect@db/prefect"
    assert {
        key: value for key, value in settings.items() if value.startswith("prefect_redis.")
    } == {
        "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
        "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": "prefect_redis.cleanup_queue",
    }
    assert [key for key, value in settings.items() if value == "redis://redis:6379/3"] == [
        "PREFECT_REDIS_MESSAGING_URL",
        "PREFECT_REDIS_WORKER_CLEANUP_QUEUE_URL",
        "PREFECT_SERVER_DOCKET_URL",
    ]
    # Done once before the processes start (infra/production/database.py), not by each of them.
    assert settings["PREFECT_API_DATABASE_MIGRATE_ON_START"] == "false"
    assert settings["PREFECT_API_BLOCKS_REGISTER_ON_START"] == "false"


def test_every_setting_is_one_prefect_reads(monkeypatch):
    """A misspelt name would be silently ignored: Prefect's settings (and prefect-redis's) read each one."""
    from prefect.settings import Settings
    from prefect_redis.cleanup_queue import RedisWorkerCleanupQueueSettings
    from prefect_redis.client import RedisMessagingSettings

    settings = server_settings("postgresql://prefect@db/prefect", "redis://redis:6379/3")
    for name, value in settings.items():
        monkeypatch.setenv(name, value)

    loaded = Settings()

    assert loaded.server.database.connection_url.get_secret_value() == settings["PREFECT_API_DATABASE_CONNECTION_URL"]
    assert loaded.server.database.migrate_on_start is False
    assert loaded.server.register_blocks_on_start is False
    assert loaded.server.events.messaging_broker == loaded.server.events.messaging_cache == "prefect_redis.messaging"
    assert loaded.server.events.causal_ordering == "prefect_redis.ordering"
    assert loaded.server.concurrency.lease_storage == "prefect_redis.lease_storage"
    assert loaded.server.worker_channel.cleanup_queue_storage == "prefect_redis.cleanup_queue"
    assert loaded.server.analytics_enabled is False
    redis = "redis://redis:6379/3"
    assert loaded.server.docket.url == RedisMessagingSettings().url == RedisWorkerCleanupQueueSettings().url == redis
