"""The production profile's server settings, built from a PostgreSQL URL and a Redis URL.

Pure: no process is started and nothing is read from the environment. ``server.py`` starts the
processes with these settings, ``scripts/production.py`` and ``compose.yaml`` are the two ways a user
runs them, and the tests start the same server against the machine's PostgreSQL and Redis.

Why each Redis setting: Prefect keeps several things in process memory by default, which is fine
for one server process and wrong for several. With PostgreSQL holding the state, Redis carries what
the API processes and the services process must share: the event stream (messaging broker; events a
run emits through one API process reach a subscriber of another), the deduplication cache, the
causal ordering of events, concurrency-slot leases, the Docket queue that schedules the background
services, and the queue that tells workers which cancelled runs to clean up.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

# The scheme Prefect's server needs (SQLAlchemy's asyncpg dialect), and the spellings we accept for it.
ASYNCPG_SCHEME = "postgresql+asyncpg"
POSTGRES_SCHEMES = ("postgresql", "postgres", ASYNCPG_SCHEME)
REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")

# prefect-redis's modules, each the Redis implementation of one of the server's pluggable parts.
REDIS_MESSAGING = "prefect_redis.messaging"
REDIS_ORDERING = "prefect_redis.ordering"
REDIS_LEASE_STORAGE = "prefect_redis.lease_storage"
REDIS_CLEANUP_QUEUE = "prefect_redis.cleanup_queue"


class ProductionSettingsError(ValueError):
    """A database or Redis URL the production profile cannot use; the message says what would do."""


def database_connection_url(database_url: str) -> str:
    """``database_url`` as Prefect's server connects to it: ``postgresql+asyncpg://…``.

    ``postgres://`` and ``postgresql://`` (what hosting providers print) are accepted and rewritten;
    SQLite is refused, because several API processes cannot share it.
    """
    parts = urlsplit(database_url.strip())
    if parts.scheme not in POSTGRES_SCHEMES:
        raise ProductionSettingsError(
            f"--database-url must be a PostgreSQL URL (postgresql://user:password@host:5432/database), "
            f"got scheme {parts.scheme or '(none)'!r}; the embedded SQLite default is `make demo`/`make start`"
        )
    if not parts.hostname or not parts.path.strip("/"):
        raise ProductionSettingsError(
            f"--database-url must name a host and a database (postgresql://user@host:5432/database), got {_redacted(database_url)!r}"
        )
    return urlunsplit(parts._replace(scheme=ASYNCPG_SCHEME))


def redis_url(url: str) -> str:
    """``url`` checked as a Redis URL (``redis://host:6379/0``, ``rediss://`` for TLS, Sentinel schemes)."""
    parts = urlsplit(url.strip())
    if parts.scheme not in REDIS_SCHEMES:
        raise ProductionSettingsError(
            f"--redis-url must be a Redis URL (redis://host:6379/0, rediss://… for TLS), got scheme {parts.scheme or '(none)'!r}"
        )
    if not parts.netloc:
        raise ProductionSettingsError(f"--redis-url must name a host (redis://host:6379/0), got {_redacted(url)!r}")
    return url.strip()


DATABASE_POOL_SIZE = 10
DATABASE_MAX_OVERFLOW = 15


def server_settings(database_url: str, redis: str) -> dict[str, str]:
    """The Prefect settings (as environment variables) of every process of a production server:
    the migration, the API processes and the services process."""
    redis = redis_url(redis)
    return {
        "PREFECT_API_DATABASE_CONNECTION_URL": database_connection_url(database_url),
        # Several processes start at once: the schema and the block types are set up once, before
        # them (infra/production/database.py); done by each, they race on a fresh database.
        "PREFECT_API_DATABASE_MIGRATE_ON_START": "false",
        "PREFECT_API_BLOCKS_REGISTER_ON_START": "false",
        # Each process's connections to PostgreSQL. Prefect's 5 (+10 overflow) ran out with 1,000 jobs
        # in flight (bench/scale.py: "QueuePool limit of size 5 overflow 10 reached", answered 500, and
        # two jobs failed); 10 + 15 per process keeps two API processes and the services within
        # PostgreSQL's default max_connections of 100.
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": str(DATABASE_POOL_SIZE),
        "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": str(DATABASE_MAX_OVERFLOW),
        "PREFECT_MESSAGING_BROKER": REDIS_MESSAGING,
        "PREFECT_MESSAGING_CACHE": REDIS_MESSAGING,
        "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": REDIS_ORDERING,
        "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": REDIS_LEASE_STORAGE,
        "PREFECT_SERVER_WORKER_CHANNEL_CLEANUP_QUEUE_STORAGE": REDIS_CLEANUP_QUEUE,
        "PREFECT_REDIS_MESSAGING_URL": redis,
        "PREFECT_REDIS_WORKER_CLEANUP_QUEUE_URL": redis,
        # Docket's keys carry its name as a prefix, so it can share the Redis database.
        "PREFECT_SERVER_DOCKET_URL": redis,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }


def _redacted(url: str) -> str:
    """``url`` without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
