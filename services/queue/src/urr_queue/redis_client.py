"""The queue's Redis client: like ``urr_common.clients.redis_client`` but one that waits.

redis-py's asyncio ``ConnectionPool`` raises ``MaxConnectionsError`` as soon as more commands
are in flight than it has connections; a burst of waiters would then get 500s. The blocking
pool makes the extra commands wait (up to the socket timeout) for a free connection instead.
A Redis Cluster client keeps its own per-node pools and is used as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING

from urr_common.clients import redis_client
from urr_common.settings import RedisSettings

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster


def queue_redis_client(settings: RedisSettings) -> Redis | RedisCluster:
    if settings.cluster:
        return redis_client(settings)
    from redis.asyncio import BlockingConnectionPool, Redis

    pool = BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        socket_timeout=settings.socket_timeout_s,
        socket_connect_timeout=settings.connect_timeout_s,
    )
    # from_pool: the client owns the pool and closes it with itself.
    return Redis.from_pool(pool)


@asynccontextmanager
async def open_queue_redis(settings: RedisSettings) -> AsyncIterator[Redis | RedisCluster]:
    client = queue_redis_client(settings)
    try:
        yield client
    finally:
        await client.aclose()
