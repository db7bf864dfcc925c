"""The clients every service builds connect to TLS-only data stores with the settings operators
set, and refuse a server they should not trust.

Redis: a private ``redis-server`` with only a TLS port and ``requirepass`` (and one that also
requires client certificates). PostgreSQL: a private server with ``ssl=on`` whose certificate
names 127.0.0.1 only, with one role that must log in by client certificate. Kafka: Tansu
speaks no TLS, so a TLS-terminating proxy stands in front of it (the broker advertises the
proxy); this proves the client's TLS, not the broker's. SASL (SCRAM, MSK IAM) cannot be
exercised against Tansu; ``test_data_plane_security_settings`` proves the client
configuration it produces.
"""

from __future__ import annotations

import os
import ssl
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
import redis.exceptions
from aiokafka.errors import KafkaConnectionError
from pydantic import Field, SecretStr

from urr_common.clients import kafka_consumer, open_kafka_producer, open_postgres, open_redis
from urr_common.settings import (
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
    load_settings,
)
from urr_devstack.procs import ServerProcess, free_port, tansu_binary
from urr_devstack.tls import (
    TestCa,
    TlsPostgres,
    tls_postgres_server,
    tls_redis_server,
    tls_terminating_proxy,
)

REDIS_PASSWORD = "urr-test-" + uuid.uuid4().hex


class DataPlaneSettings(ServiceSettings):
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"), "urr-data-ca")


@pytest.fixture(scope="module")
def wrong_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    """A CA that signed nothing the servers present."""
    return TestCa(tmp_path_factory.mktemp("wrong-ca"), "someone-else-ca")


def _settings(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> DataPlaneSettings:
    """Settings as a service loads them: from ``URR_*`` variables."""
    for name in list(os.environ):
        if name.startswith("URR_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(DataPlaneSettings)


# --- Redis -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_redis_port(tmp_path_factory: pytest.TempPathFactory, ca: TestCa) -> Iterator[int]:
    with tls_redis_server(tmp_path_factory.mktemp("redis-tls"), ca, password=REDIS_PASSWORD) as s:
        yield s.port


def _redis_env(port: int, ca_file: Path, password: str | None) -> dict[str, str]:
    env = {
        "URR_REDIS__URL": f"rediss://localhost:{port}/0",
        "URR_REDIS__CA_FILE": str(ca_file),
        # Generous: the TLS handshake on a loaded 2-core machine.
        "URR_REDIS__CONNECT_TIMEOUT_S": "5",
        "URR_REDIS__SOCKET_TIMEOUT_S": "5",
    }
    if password is not None:
        env["URR_REDIS__PASSWORD"] = password
    return env


async def test_redis_connects_over_tls_with_the_right_ca_and_password(
    monkeypatch: pytest.MonkeyPatch, tls_redis_port: int, ca: TestCa
) -> None:
    settings = _settings(monkeypatch, _redis_env(tls_redis_port, ca.ca_file, REDIS_PASSWORD))
    async with open_redis(settings.redis) as client:
        await client.set("tls-greeting", b"hello")
        assert await client.get("tls-greeting") == b"hello"


async def test_redis_tls_via_the_flag_on_a_redis_url(
    monkeypatch: pytest.MonkeyPatch, tls_redis_port: int, ca: TestCa
) -> None:
    env = _redis_env(tls_redis_port, ca.ca_file, REDIS_PASSWORD)
    env["URR_REDIS__URL"] = f"redis://127.0.0.1:{tls_redis_port}/0"
    env["URR_REDIS__TLS"] = "true"
    settings = _settings(monkeypatch, env)
    async with open_redis(settings.redis) as client:
        assert await client.ping()


async def test_redis_refuses_a_server_signed_by_another_ca(
    monkeypatch: pytest.MonkeyPatch, tls_redis_port: int, wrong_ca: TestCa
) -> None:
    settings = _settings(monkeypatch, _redis_env(tls_redis_port, wrong_ca.ca_file, REDIS_PASSWORD))
    async with open_redis(settings.redis) as client:
        with pytest.raises(redis.exceptions.ConnectionError, match="certificate verify failed"):
            await client.ping()


async def test_redis_refuses_a_wrong_password(
    monkeypatch: pytest.MonkeyPatch, tls_redis_port: int, ca: TestCa
) -> None:
    settings = _settings(monkeypatch, _redis_env(tls_redis_port, ca.ca_file, "not-the-password"))
    async with open_redis(settings.redis) as client:
        with pytest.raises(redis.exceptions.AuthenticationError, match="invalid"):
            await client.ping()


async def test_redis_without_a_password_is_not_served(
    monkeypatch: pytest.MonkeyPatch, tls_redis_port: int, ca: TestCa
) -> None:
    settings = _settings(monkeypatch, _redis_env(tls_redis_port, ca.ca_file, None))
    async with open_redis(settings.redis) as client:
        with pytest.raises(redis.exceptions.AuthenticationError):
            await client.get("tls-greeting")


async def test_plain_redis_cannot_talk_to_the_tls_port(tls_redis_port: int) -> None:
    settings = RedisSettings(
        url=f"redis://127.0.0.1:{tls_redis_port}/0",
        password=SecretStr(REDIS_PASSWORD),
        connect_timeout_s=5,
        socket_timeout_s=5,
    )
    async with open_redis(settings) as client:
        # The server drops the connection at the failed handshake; on a loaded machine the
        # client may give up waiting first. Either way no command is served.
        with pytest.raises((redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)):
            await client.ping()


@pytest.fixture(scope="module")
def mtls_redis_port(tmp_path_factory: pytest.TempPathFactory, ca: TestCa) -> Iterator[int]:
    """A TLS-only Redis that also wants a client certificate from ``ca``."""
    workdir = tmp_path_factory.mktemp("redis-mtls")
    with tls_redis_server(workdir, ca, password=REDIS_PASSWORD, require_client_cert=True) as s:
        yield s.port


async def test_redis_presents_the_client_certificate_when_the_server_wants_one(
    monkeypatch: pytest.MonkeyPatch, mtls_redis_port: int, ca: TestCa
) -> None:
    client_cert = ca.issue("urr-redis-client", [], client=True)
    env = _redis_env(mtls_redis_port, ca.ca_file, REDIS_PASSWORD)
    settings = _settings(monkeypatch, env)
    async with open_redis(settings.redis) as client:
        with pytest.raises(redis.exceptions.ConnectionError):
            await client.ping()  # no certificate: the server ends the handshake
    env |= {
        "URR_REDIS__CERT_FILE": str(client_cert.cert_file),
        "URR_REDIS__KEY_FILE": str(client_cert.key_file),
    }
    settings = _settings(monkeypatch, env)
    async with open_redis(settings.redis) as client:
        assert await client.ping()


# --- PostgreSQL --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_postgres(ca: TestCa) -> Iterator[TlsPostgres]:
    # The certificate names the address only: "localhost" is a name it does not carry.
    with tls_postgres_server(ca, ["127.0.0.1"], cert_users=("urr_cert_app",)) as server:
        yield server


def _pg_env(server: TlsPostgres, host: str, mode: str, root: Path) -> dict[str, str]:
    return {
        "URR_POSTGRES__DSN": f"postgresql://postgres@{host}:{server.port}/postgres",
        "URR_POSTGRES__SSLMODE": mode,
        "URR_POSTGRES__SSLROOTCERT": str(root),
        "URR_POSTGRES__MIN_CONNECTIONS": "1",
        "URR_POSTGRES__MAX_CONNECTIONS": "1",
    }


async def test_postgres_verify_full_connects_over_tls_with_the_right_root_cert(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: TlsPostgres, ca: TestCa
) -> None:
    env = _pg_env(tls_postgres, "127.0.0.1", "verify-full", ca.ca_file)
    settings = _settings(monkeypatch, env)
    async with open_postgres(settings.postgres) as pool:
        encrypted = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
    assert encrypted is True


async def test_postgres_verify_full_refuses_a_server_signed_by_another_ca(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: TlsPostgres, wrong_ca: TestCa
) -> None:
    env = _pg_env(tls_postgres, "127.0.0.1", "verify-full", wrong_ca.ca_file)
    settings = _settings(monkeypatch, env)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        async with open_postgres(settings.postgres):
            pass


async def test_postgres_verify_full_refuses_a_host_the_certificate_does_not_name(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: TlsPostgres, ca: TestCa
) -> None:
    env = _pg_env(tls_postgres, "localhost", "verify-full", ca.ca_file)
    settings = _settings(monkeypatch, env)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"Hostname mismatch|doesn't match"):
        async with open_postgres(settings.postgres):
            pass
    # verify-ca checks the chain only: the same host name is accepted.
    env["URR_POSTGRES__SSLMODE"] = "verify-ca"
    settings = _settings(monkeypatch, env)
    async with open_postgres(settings.postgres) as pool:
        assert await pool.fetchval("SELECT 1") == 1


async def test_postgres_client_certificate_authenticates_a_cert_only_role(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: TlsPostgres, ca: TestCa
) -> None:
    env = _pg_env(tls_postgres, "127.0.0.1", "verify-full", ca.ca_file)
    env["URR_POSTGRES__DSN"] = f"postgresql://urr_cert_app@127.0.0.1:{tls_postgres.port}/postgres"
    settings = _settings(monkeypatch, env)
    with pytest.raises(asyncpg.InvalidAuthorizationSpecificationError, match="certificate"):
        async with open_postgres(settings.postgres):
            pass
    client = ca.issue("urr_cert_app", [], client=True)  # CN = the role
    env["URR_POSTGRES__SSLCERT"] = str(client.cert_file)
    env["URR_POSTGRES__SSLKEY"] = str(client.key_file)
    settings = _settings(monkeypatch, env)
    async with open_postgres(settings.postgres) as pool:
        assert await pool.fetchval("SELECT current_user") == "urr_cert_app"


# --- Kafka (TLS through a terminating proxy in front of Tansu) ---------------------------


@pytest.fixture(scope="module")
def tansu_behind_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    """(broker port, proxy port): Tansu advertises the proxy's port, so every connection a
    client opens after bootstrapping also goes through TLS."""
    broker_port, proxy_port = free_port(), free_port()
    argv = [tansu_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{broker_port}"]
    argv += ["--advertised-listener-url", f"tcp://127.0.0.1:{proxy_port}"]
    argv += ["--storage-engine", "memory://tansu/"]
    log = tmp_path_factory.mktemp("tansu-tls") / "tansu.log"
    broker = ServerProcess("tansu", argv, broker_port, log, die_with_parent=True)
    broker.start()
    try:
        yield broker_port, proxy_port
    finally:
        broker.stop()


@pytest_asyncio.fixture
async def kafka_tls_bootstrap(
    tansu_behind_proxy: tuple[int, int], ca: TestCa
) -> AsyncIterator[str]:
    broker_port, proxy_port = tansu_behind_proxy
    cert = ca.issue("kafka-broker", ["127.0.0.1", "localhost"])
    async with tls_terminating_proxy("127.0.0.1", broker_port, cert, port=proxy_port):
        yield f"127.0.0.1:{proxy_port}"


def _kafka_env(bootstrap: str, ca_file: Path) -> dict[str, str]:
    return {
        "URR_KAFKA__BOOTSTRAP_SERVERS": bootstrap,
        "URR_KAFKA__SECURITY_PROTOCOL": "SSL",
        "URR_KAFKA__CA_FILE": str(ca_file),
        # Generous: TLS handshakes through the proxy on a loaded 2-core machine.
        "URR_KAFKA__REQUEST_TIMEOUT_MS": "30000",
    }


async def test_kafka_produces_and_consumes_over_tls_with_the_right_ca(
    monkeypatch: pytest.MonkeyPatch, kafka_tls_bootstrap: str, ca: TestCa
) -> None:
    settings = _settings(monkeypatch, _kafka_env(kafka_tls_bootstrap, ca.ca_file))
    topic = f"tls-{uuid.uuid4().hex[:8]}"
    async with open_kafka_producer(settings.kafka) as producer:
        await producer.send_and_wait(topic, b"over-tls", key=b"k")
    consumer = kafka_consumer(settings.kafka, topic, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=10_000)
    finally:
        await consumer.stop()
    assert [m.value for records in batches.values() for m in records] == [b"over-tls"]


async def test_kafka_refuses_a_broker_signed_by_another_ca(
    monkeypatch: pytest.MonkeyPatch, kafka_tls_bootstrap: str, wrong_ca: TestCa
) -> None:
    settings = _settings(monkeypatch, _kafka_env(kafka_tls_bootstrap, wrong_ca.ca_file))
    with pytest.raises(KafkaConnectionError):
        async with open_kafka_producer(settings.kafka):
            pass


async def test_kafka_presents_the_client_certificate_when_the_broker_wants_one(
    monkeypatch: pytest.MonkeyPatch, tansu_behind_proxy: tuple[int, int], ca: TestCa
) -> None:
    broker_port, proxy_port = tansu_behind_proxy
    server_cert = ca.issue("kafka-broker-mtls", ["127.0.0.1"])
    client_cert = ca.issue("urr-kafka-client", [], client=True)
    bootstrap = f"127.0.0.1:{proxy_port}"
    env = _kafka_env(bootstrap, ca.ca_file)
    async with tls_terminating_proxy(
        "127.0.0.1", broker_port, server_cert, port=proxy_port, client_ca=ca.ca_file
    ):
        settings = _settings(monkeypatch, env)
        with pytest.raises(KafkaConnectionError):
            async with open_kafka_producer(settings.kafka):
                pass
        env["URR_KAFKA__CERT_FILE"] = str(client_cert.cert_file)
        env["URR_KAFKA__KEY_FILE"] = str(client_cert.key_file)
        settings = _settings(monkeypatch, env)
        async with open_kafka_producer(settings.kafka) as producer:
            metadata = await producer.send_and_wait(f"mtls-{uuid.uuid4().hex[:8]}", b"x")
            assert metadata.offset == 0
