"""Client factories for Redis (single or Cluster), PostgreSQL, Kafka and AWS.

Each is an async context manager so an application opens it in ``cleanup_ctx`` and closes it
on shutdown, inside the running loop (aiokafka and asyncpg bind to the loop that starts them).
Driver packages are optional extras of ``urr-common`` and imported only here, on use, so a
service that never talks to AWS never imports boto.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from urr_common.settings import (
    AwsSettings,
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    SettingsError,
)

if TYPE_CHECKING:
    import asyncpg
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.admin import AIOKafkaAdminClient
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster


def existing_file(path: Path | None, variable: str) -> str:
    """``path`` as a string, or a ``SettingsError`` naming the variable when it is missing.

    Checked here, when a service builds its clients at start-up, rather than in the settings
    model: the deploy checks load the same settings from the manifests on a machine that has
    none of the mounted certificate files.
    """
    if path is None or not path.is_file():
        raise SettingsError(f"{variable}={path}: no such file (is the volume mounted?)")
    return str(path)


def redis_security_kwargs(settings: RedisSettings) -> dict[str, Any]:
    """AUTH and TLS keyword arguments shared by the single-node and the Cluster client."""
    kwargs: dict[str, Any] = {}
    if settings.password is not None:
        kwargs["password"] = settings.password.get_secret_value()
        if settings.username is not None:
            kwargs["username"] = settings.username
    if settings.uses_tls:
        kwargs.update(
            ssl_ca_certs=existing_file(settings.ca_file, "URR_REDIS__CA_FILE"),
            ssl_cert_reqs="required",
            ssl_check_hostname=True,
            ssl_min_version=ssl.TLSVersion.TLSv1_2,
        )
        if settings.cert_file is not None:
            kwargs["ssl_certfile"] = existing_file(settings.cert_file, "URR_REDIS__CERT_FILE")
            kwargs["ssl_keyfile"] = existing_file(settings.key_file, "URR_REDIS__KEY_FILE")
    return kwargs


def redis_client(settings: RedisSettings) -> Redis | RedisCluster:
    """A Redis or Redis Cluster client; connections open lazily on first command.

    The single-node client uses a blocking pool: past ``max_connections`` commands in flight,
    redis-py's default pool raises ``MaxConnectionsError`` at once, which a burst of requests
    would turn into errors; this one waits up to the socket timeout for a free connection.
    A Cluster client keeps its own per-node pools.
    """
    from redis.asyncio import BlockingConnectionPool, Redis
    from redis.asyncio.cluster import RedisCluster
    from redis.asyncio.connection import SSLConnection

    options: dict[str, Any] = {
        "socket_timeout": settings.socket_timeout_s,
        "socket_connect_timeout": settings.connect_timeout_s,
        **redis_security_kwargs(settings),
    }
    if settings.cluster:
        if settings.uses_tls:
            options["ssl"] = True
        return RedisCluster.from_url(settings.url, decode_responses=False, **options)
    if settings.uses_tls:
        # A redis:// URL with URR_REDIS__TLS=true: the scheme alone would pick plain TCP.
        options["connection_class"] = SSLConnection
    pool = BlockingConnectionPool.from_url(
        settings.url,
        max_connections=settings.max_connections,
        timeout=settings.socket_timeout_s,
        **options,
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


def postgres_ssl(settings: PostgresSettings) -> ssl.SSLContext | str | None:
    """asyncpg's ``ssl`` argument for ``settings``; None leaves it to the DSN or PGSSLMODE.

    The verifying modes get a context of our own that trusts ``sslrootcert`` alone (asyncpg
    would otherwise look for ``~/.postgresql/root.crt``), checking the host name only for
    ``verify-full``, as libpq does.
    """
    mode = settings.sslmode
    if mode is None:
        return None
    root = "URR_POSTGRES__SSLROOTCERT"
    if mode in ("verify-ca", "verify-full"):
        context = ssl.create_default_context(cafile=existing_file(settings.sslrootcert, root))
        context.check_hostname = mode == "verify-full"
    elif mode == "require" and (settings.sslrootcert or settings.sslcert):
        # libpq: require with a root certificate verifies the chain (as verify-ca).
        if settings.sslrootcert is not None:
            context = ssl.create_default_context(cafile=existing_file(settings.sslrootcert, root))
            context.check_hostname = False
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    else:
        return mode
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.sslcert is not None:
        context.load_cert_chain(
            existing_file(settings.sslcert, "URR_POSTGRES__SSLCERT"),
            existing_file(settings.sslkey, "URR_POSTGRES__SSLKEY"),
        )
    return context


def postgres_connect_kwargs(settings: PostgresSettings) -> dict[str, Any]:
    """The DSN and TLS arguments of ``asyncpg.connect``/``create_pool`` for ``settings``."""
    kwargs: dict[str, Any] = {"dsn": settings.dsn.get_secret_value()}
    tls = postgres_ssl(settings)
    if tls is not None:
        kwargs["ssl"] = tls
    return kwargs


async def _keep_session(connection: asyncpg.Connection) -> None:
    """A pool's reset that sends nothing (asyncpg still rolls back an open transaction)."""


async def create_postgres_pool(
    settings: PostgresSettings, *, reset_sessions: bool = True
) -> asyncpg.Pool:
    """An asyncpg pool; ``min_connections`` of them are opened before it is returned.

    ``reset_sessions=False``: a connection going back to the pool is not sent asyncpg's
    reset (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``), a second round
    trip after every pooled query that also keeps the connection from the next caller
    meanwhile. Only for a pool whose users change no session state (no ``SET``, ``LISTEN``,
    session advisory locks or open cursors); an open transaction is still rolled back."""
    import asyncpg

    return await asyncpg.create_pool(
        **postgres_connect_kwargs(settings),
        min_size=settings.min_connections,
        max_size=settings.max_connections,
        command_timeout=settings.command_timeout_s,
        reset=None if reset_sessions else _keep_session,
    )


@asynccontextmanager
async def open_postgres(
    settings: PostgresSettings, *, reset_sessions: bool = True
) -> AsyncIterator[asyncpg.Pool]:
    """An asyncpg pool (see ``create_postgres_pool``), closed on exit."""
    pool = await create_postgres_pool(settings, reset_sessions=reset_sessions)
    try:
        yield pool
    finally:
        await pool.close()


def kafka_security_kwargs(settings: KafkaSettings) -> dict[str, Any]:
    """TLS and SASL keyword arguments for every aiokafka client (producer, consumer, admin).

    Every client a service builds passes these, so one setting secures all of its
    connections to the brokers.
    """
    kwargs: dict[str, Any] = {"security_protocol": settings.security_protocol}
    if settings.security_protocol == "PLAINTEXT":
        return kwargs
    context = ssl.create_default_context(
        cafile=existing_file(settings.ca_file, "URR_KAFKA__CA_FILE")
    )
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file is not None:
        context.load_cert_chain(
            existing_file(settings.cert_file, "URR_KAFKA__CERT_FILE"),
            existing_file(settings.key_file, "URR_KAFKA__KEY_FILE"),
        )
    kwargs["ssl_context"] = context
    mechanism = settings.sasl_mechanism
    if mechanism == "AWS_MSK_IAM":
        from urr_common.msk_iam import MskIamTokenProvider

        # MSK's IAM listener speaks SASL/OAUTHBEARER; the token is a SigV4-signed request.
        kwargs["sasl_mechanism"] = "OAUTHBEARER"
        kwargs["sasl_oauth_token_provider"] = MskIamTokenProvider(str(settings.aws_region))
    elif mechanism is not None:
        kwargs["sasl_mechanism"] = mechanism
        kwargs["sasl_plain_username"] = settings.username
        kwargs["sasl_plain_password"] = (
            settings.password.get_secret_value() if settings.password else None
        )
    return kwargs


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
        **kafka_security_kwargs(settings),
    )


def kafka_consumer(settings: KafkaSettings, *topics: str, **options: Any) -> AIOKafkaConsumer:
    """A consumer of ``topics`` on ``settings``' brokers, secured like every other client;
    ``options`` are the consumer's own (group, offsets, fetch sizes, client id)."""
    from aiokafka import AIOKafkaConsumer

    options.setdefault("client_id", settings.client_id)
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=settings.bootstrap_servers,
        **options,
        **kafka_security_kwargs(settings),
    )


def kafka_admin(settings: KafkaSettings, **options: Any) -> AIOKafkaAdminClient:
    """An admin client on ``settings``' brokers, secured like every other client."""
    from aiokafka.admin import AIOKafkaAdminClient

    options.setdefault("client_id", settings.client_id)
    return AIOKafkaAdminClient(
        bootstrap_servers=settings.bootstrap_servers,
        **options,
        **kafka_security_kwargs(settings),
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
