"""Client factories for Redis (single or Cluster), PostgreSQL, Kafka and AWS.

Each is an async context manager so an application opens it in ``cleanup_ctx`` and closes it
on shutdown, inside the running loop (aiokafka and asyncpg bind to the loop that starts them).
Driver packages are optional extras of ``urr-common`` and imported only here, on use, so a
service that never talks to AWS never imports boto.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import TYPE_CHECKING, Any

from urr_common.settings import AwsSettings, KafkaSettings, PostgresSettings, RedisSettings

if TYPE_CHECKING:
    import asyncpg
    from aiokafka import AIOKafkaProducer
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster


def redis_client(settings: RedisSettings) -> Redis | RedisCluster:
    """A Redis or Redis Cluster client; connections open lazily on first command.

    The single-node client uses a blocking pool: past ``max_connections`` commands in flight,
    redis-py's default pool raises ``MaxConnectionsError`` at once, which a burst of requests
    would turn into errors; this one waits up to the socket timeout for a free connection.
    A Cluster client keeps its own per-node pools.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import RedisCluster

    timeouts: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
    }
    if settings.cluster:
        return RedisCluster.from_url(settings.url, decode_responses=False, **timeouts)
    pool = BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        **timeouts,
    )
    # from_pool: the client owns the pool and closes it with itself.
    return Redis.from_pool(pool)


@asynccontextmanager
async def open_redis(settings: RedisSettings) -> AsyncIterator[Redis | RedisCluster]:
    client = redis_client(settings)
    try:
        yield client
    finally:
        await client.aclose()


@asynccontextmanager
async def open_postgres(settings: PostgresSettings) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool; ``min_connections`` of them are opened before it is handed out."""
    import asyncpg

    pool = await asyncpg.create_pool(
        settings.dsn.get_secret_value(),
        min_size=settings.min_connections,
        max_size=settings.max_connections,
        command_timeout=settings.command_timeout_s,
    )
    try:
        yield pool
    finally:
        await pool.close()


def kafka_producer(settings: KafkaSettings) -> AIOKafkaProducer:
    """A producer with ``acks=all``; idempotence only where the broker supports it."""
    from aiokafka import AIOKafkaProducer

    return AIOKafkaProducer(
        bootstrap_servers=settings.bootstrap_servers,
        client_id=settings.client_id,
        acks="all",
        enable_idempotence=settings.enable_idempotence,
        request_timeout_ms=settings.request_timeout_ms,
        linger_ms=settings.linger_ms,
    )


@asynccontextmanager
async def open_kafka_producer(settings: KafkaSettings) -> AsyncIterator[AIOKafkaProducer]:
    """A started producer, stopped on exit; also stopped when ``start()`` itself fails, so
    a caller retrying while the broker is down leaks nothing."""
    producer = kafka_producer(settings)
    try:
        await producer.start()
        yield producer
    finally:
        await producer.stop()


def aws_client_kwargs(settings: AwsSettings, service: str | None = None) -> dict[str, Any]:
    """Keyword arguments for a boto3/aioboto3 client of ``service``: region, endpoint (the
    service's own when it has one, ``AwsSettings.endpoint_for``) and keys when set."""
    kwargs: dict[str, Any] = {"region_name": settings.region}
    endpoint = settings.endpoint_for(service) if service else settings.endpoint_url
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    if settings.access_key_id and settings.secret_access_key:
        kwargs["aws_access_key_id"] = settings.access_key_id.get_secret_value()
        kwargs["aws_secret_access_key"] = settings.secret_access_key.get_secret_value()
    return kwargs


@asynccontextmanager
async def open_aws_clients(settings: AwsSettings, *services: str) -> AsyncIterator[dict[str, Any]]:
    """One aioboto3 client per named service (``"sqs"``, ``"dynamodb"``), from one session.

    A session and its clients are costly to create, so a service opens them once for its
    lifetime rather than per request.
    """
    import aioboto3

    session = aioboto3.Session()
    async with AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(
                session.client(name, **aws_client_kwargs(settings, name))
            )
            for name in services
        }
        yield clients
