"""Every data-plane security setting is validated at start-up with a message naming what to fix,
and turns into the client arguments it promises (Kafka SASL is proven here by the aiokafka
configuration it produces: the local broker, Tansu, keeps no SCRAM users and is no MSK)."""

from __future__ import annotations

import base64
import ssl
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer
from pydantic import Field, SecretStr

from urr_common.clients import (
    kafka_admin,
    kafka_consumer,
    kafka_producer,
    kafka_security_kwargs,
    postgres_connect_kwargs,
    redis_client,
    redis_security_kwargs,
)
from urr_common.msk_iam import MskIamTokenProvider
from urr_common.settings import (
    KafkaSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
    SettingsError,
    load_settings,
)
from urr_devstack.tls import TestCa


class DataPlaneSettings(ServiceSettings):
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("URR_"):
            monkeypatch.delenv(name)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def client_cert(ca: TestCa) -> tuple[Path, Path]:
    issued = ca.issue("urr-client", [], client=True)
    return issued.cert_file, issued.key_file


def _refused(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as caught:
        load_settings(DataPlaneSettings)
    return str(caught.value)


def _loaded(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> DataPlaneSettings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(DataPlaneSettings)


# --- Redis -------------------------------------------------------------------------------


def test_redis_tls_without_a_ca_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_REDIS__TLS": "true"})
    assert "URR_REDIS__CA_FILE is not set" in message


def test_a_rediss_url_is_tls_and_needs_a_ca_file(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_REDIS__URL": "rediss://cache.internal:6379/0"})
    assert "URR_REDIS__CA_FILE is not set" in message


@pytest.mark.parametrize(
    ("env_name", "build"),
    [
        ("URR_REDIS__CA_FILE", lambda s: redis_client(s.redis)),
        ("URR_POSTGRES__SSLROOTCERT", lambda s: postgres_connect_kwargs(s.postgres)),
        ("URR_KAFKA__CA_FILE", lambda s: kafka_security_kwargs(s.kafka)),
    ],
)
def test_a_ca_file_that_does_not_exist_is_named_when_clients_are_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env_name: str, build: Any
) -> None:
    missing = tmp_path / "nope.pem"
    settings = _loaded(
        monkeypatch,
        {
            "URR_REDIS__TLS": "true",
            "URR_POSTGRES__SSLMODE": "verify-full",
            "URR_KAFKA__SECURITY_PROTOCOL": "SSL",
            "URR_REDIS__CA_FILE": str(missing),
            "URR_POSTGRES__SSLROOTCERT": str(missing),
            "URR_KAFKA__CA_FILE": str(missing),
        },
    )
    with pytest.raises(SettingsError, match=f"{env_name}=.*nope.pem: no such file"):
        build(settings)


def test_redis_tls_files_without_tls_are_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    message = _refused(monkeypatch, {"URR_REDIS__CA_FILE": str(ca.ca_file)})
    assert "used only with TLS" in message


def test_a_redis_client_cert_needs_its_key(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa, client_cert: tuple[Path, Path]
) -> None:
    env = {
        "URR_REDIS__TLS": "true",
        "URR_REDIS__CA_FILE": str(ca.ca_file),
        "URR_REDIS__CERT_FILE": str(client_cert[0]),
    }
    assert "URR_REDIS__CERT_FILE and URR_REDIS__KEY_FILE go together" in _refused(monkeypatch, env)


def test_a_redis_username_needs_a_password(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_REDIS__USERNAME": "urr"})
    assert "URR_REDIS__USERNAME is set without URR_REDIS__PASSWORD" in message


def test_redis_tls_with_a_unix_socket_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    env = {
        "URR_REDIS__URL": "unix:///run/redis.sock",
        "URR_REDIS__TLS": "true",
        "URR_REDIS__CA_FILE": str(ca.ca_file),
    }
    assert "unix:// socket" in _refused(monkeypatch, env)


def test_the_redis_password_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(
        monkeypatch, {"URR_REDIS__PASSWORD": "hunter2-secret", "URR_REDIS__TLS": "1"}
    )
    assert "hunter2-secret" not in message
    monkeypatch.delenv("URR_REDIS__TLS")
    settings = _loaded(monkeypatch, {"URR_REDIS__USERNAME": "urr"})
    assert "hunter2-secret" not in repr(settings)
    assert settings.redis.password is not None


def test_redis_settings_become_auth_and_verifying_tls_arguments(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa, client_cert: tuple[Path, Path]
) -> None:
    settings = _loaded(
        monkeypatch,
        {
            "URR_REDIS__URL": "redis://cache.internal:6379/0",
            "URR_REDIS__TLS": "true",
            "URR_REDIS__CA_FILE": str(ca.ca_file),
            "URR_REDIS__CERT_FILE": str(client_cert[0]),
            "URR_REDIS__KEY_FILE": str(client_cert[1]),
            "URR_REDIS__USERNAME": "urr",
            "URR_REDIS__PASSWORD": "pw",
        },
    ).redis
    kwargs = redis_security_kwargs(settings)
    assert kwargs["username"] == "urr"
    assert kwargs["password"] == "pw"
    assert kwargs["ssl_ca_certs"] == str(ca.ca_file)
    assert kwargs["ssl_cert_reqs"] == "required"
    assert kwargs["ssl_check_hostname"] is True
    assert kwargs["ssl_certfile"] == str(client_cert[0])
    # A redis:// URL with TLS on still gets TLS connections.
    client = redis_client(settings)
    assert client.connection_pool.connection_class.__name__ == "SSLConnection"  # type: ignore[union-attr]


async def test_a_redis_cluster_client_gets_the_same_tls_and_auth(ca: TestCa) -> None:
    settings = RedisSettings(
        url="rediss://cluster.internal:6379/0",
        cluster=True,
        ca_file=ca.ca_file,
        password=SecretStr("pw"),
    )
    client = redis_client(settings)
    try:
        kwargs = client.connection_kwargs  # type: ignore[union-attr]
        assert kwargs["connection_class"].__name__ == "SSLConnection"
        assert kwargs["ssl_ca_certs"] == str(ca.ca_file)
        assert kwargs["ssl_check_hostname"] is True
        assert kwargs["password"] == "pw"
    finally:
        await client.aclose()


def test_plain_redis_gets_no_tls_arguments() -> None:
    assert redis_security_kwargs(RedisSettings()) == {}


# --- PostgreSQL --------------------------------------------------------------------------


def test_verify_full_without_a_root_cert_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_POSTGRES__SSLMODE": "verify-full"})
    assert "URR_POSTGRES__SSLMODE=verify-full needs URR_POSTGRES__SSLROOTCERT" in message


def test_verify_ca_without_a_root_cert_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_POSTGRES__SSLMODE": "verify-ca"})
    assert "needs URR_POSTGRES__SSLROOTCERT" in message


def test_an_unknown_sslmode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_POSTGRES__SSLMODE": "verify"})
    assert "URR_POSTGRES__SSLMODE" in message
    assert "'verify-full'" in message


def test_sslmode_given_in_the_dsn_and_the_setting_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {
        "URR_POSTGRES__DSN": "postgresql://urr@db.internal:5432/urr?sslmode=require",
        "URR_POSTGRES__SSLMODE": "require",
    }
    assert "sslmode is given twice" in _refused(monkeypatch, env)


def test_a_root_cert_without_a_verifying_mode_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    env = {"URR_POSTGRES__SSLROOTCERT": str(ca.ca_file), "URR_POSTGRES__SSLMODE": "prefer"}
    assert "need URR_POSTGRES__SSLMODE require, verify-ca or verify-full" in _refused(
        monkeypatch, env
    )


def test_a_postgres_client_key_needs_its_cert(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa, client_cert: tuple[Path, Path]
) -> None:
    env = {
        "URR_POSTGRES__SSLMODE": "verify-full",
        "URR_POSTGRES__SSLROOTCERT": str(ca.ca_file),
        "URR_POSTGRES__SSLKEY": str(client_cert[1]),
    }
    assert "URR_POSTGRES__SSLCERT and URR_POSTGRES__SSLKEY go together" in _refused(
        monkeypatch, env
    )


def test_verify_full_becomes_a_context_that_checks_chain_and_host(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    settings = _loaded(
        monkeypatch,
        {"URR_POSTGRES__SSLMODE": "verify-full", "URR_POSTGRES__SSLROOTCERT": str(ca.ca_file)},
    ).postgres
    context = postgres_connect_kwargs(settings)["ssl"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    verify_ca = settings.model_copy(update={"sslmode": "verify-ca"})
    context = postgres_connect_kwargs(verify_ca)["ssl"]
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is False


def test_without_sslmode_the_dsn_decides() -> None:
    settings = PostgresSettings()
    assert "ssl" not in postgres_connect_kwargs(settings)
    assert postgres_connect_kwargs(settings.model_copy(update={"sslmode": "disable"}))["ssl"] == (
        "disable"
    )


# --- Kafka -------------------------------------------------------------------------------


def test_an_unknown_sasl_mechanism_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(
        monkeypatch,
        {"URR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "URR_KAFKA__SASL_MECHANISM": "PLAIN"},
    )
    assert "URR_KAFKA__SASL_MECHANISM" in message
    assert "'SCRAM-SHA-512'" in message
    assert "'AWS_MSK_IAM'" in message


def test_an_unknown_security_protocol_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT"})
    assert "URR_KAFKA__SECURITY_PROTOCOL" in message


def test_kafka_tls_without_a_ca_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    message = _refused(monkeypatch, {"URR_KAFKA__SECURITY_PROTOCOL": "SSL"})
    assert "URR_KAFKA__SECURITY_PROTOCOL=SSL needs URR_KAFKA__CA_FILE" in message


def test_sasl_ssl_without_a_mechanism_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    env = {"URR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL", "URR_KAFKA__CA_FILE": str(ca.ca_file)}
    assert "needs URR_KAFKA__SASL_MECHANISM" in _refused(monkeypatch, env)


def test_a_sasl_mechanism_without_sasl_ssl_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    env = {
        "URR_KAFKA__SECURITY_PROTOCOL": "SSL",
        "URR_KAFKA__CA_FILE": str(ca.ca_file),
        "URR_KAFKA__SASL_MECHANISM": "AWS_MSK_IAM",
    }
    assert "needs URR_KAFKA__SECURITY_PROTOCOL=SASL_SSL" in _refused(monkeypatch, env)


def test_scram_without_username_and_password_is_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    env = {
        "URR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "URR_KAFKA__CA_FILE": str(ca.ca_file),
        "URR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
        "URR_KAFKA__USERNAME": "urr",
    }
    message = _refused(monkeypatch, env)
    assert "SCRAM-SHA-512 needs URR_KAFKA__USERNAME and URR_KAFKA__PASSWORD" in message


def test_msk_iam_needs_a_region_and_no_password(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    env = {
        "URR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "URR_KAFKA__CA_FILE": str(ca.ca_file),
        "URR_KAFKA__SASL_MECHANISM": "AWS_MSK_IAM",
    }
    assert "AWS_MSK_IAM needs URR_KAFKA__AWS_REGION" in _refused(monkeypatch, env)
    env |= {"URR_KAFKA__AWS_REGION": "ap-northeast-2", "URR_KAFKA__PASSWORD": "x"}
    assert "used only with a SCRAM mechanism" in _refused(monkeypatch, env)


def test_kafka_tls_files_without_tls_are_refused(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    message = _refused(monkeypatch, {"URR_KAFKA__CA_FILE": str(ca.ca_file)})
    assert "need URR_KAFKA__SECURITY_PROTOCOL=SSL or SASL_SSL" in message


async def test_scram_settings_configure_every_kafka_client(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    settings = _loaded(
        monkeypatch,
        {
            "URR_KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
            "URR_KAFKA__CA_FILE": str(ca.ca_file),
            "URR_KAFKA__SASL_MECHANISM": "SCRAM-SHA-512",
            "URR_KAFKA__USERNAME": "urr-app",
            "URR_KAFKA__PASSWORD": "scram-pw",
        },
    ).kafka
    producer = kafka_producer(settings)
    consumer = kafka_consumer(settings, "topic", group_id="g")
    admin = kafka_admin(settings)
    for client in (producer.client, consumer._client, admin._client):
        assert client._security_protocol == "SASL_SSL"
        assert client._sasl_mechanism == "SCRAM-SHA-512"
        assert client._sasl_plain_username == "urr-app"
        assert client._sasl_plain_password == "scram-pw"
        context = client._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED
        assert context.check_hostname is True
    await producer.stop()
    await consumer.stop()
    await admin.close()


async def test_msk_iam_signs_a_kafka_connect_token_for_its_region(
    monkeypatch: pytest.MonkeyPatch, ca: TestCa
) -> None:
    # Static keys: the signature is computed locally, no AWS call is made.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAURRTESTKEY")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "urr-test-secret-access-key-0000000000000")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    settings = KafkaSettings(
        security_protocol="SASL_SSL",
        ca_file=ca.ca_file,
        sasl_mechanism="AWS_MSK_IAM",
        aws_region="ap-northeast-2",
    )
    kwargs = kafka_security_kwargs(settings)
    assert kwargs["sasl_mechanism"] == "OAUTHBEARER"
    provider = kwargs["sasl_oauth_token_provider"]
    assert isinstance(provider, MskIamTokenProvider)
    token = await provider.token()
    url = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
    parsed = urllib.parse.urlparse(url)
    query = urllib.parse.parse_qs(parsed.query)
    assert parsed.hostname == "kafka.ap-northeast-2.amazonaws.com"
    assert query["Action"] == ["kafka-cluster:Connect"]
    assert query["X-Amz-Credential"][0].startswith("AKIAURRTESTKEY/")
    assert "X-Amz-Signature" in query
    # Reused while fresh: connections opened together do not each sign.
    assert await provider.token() == token
    consumer = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:9098", **kwargs)
    assert consumer._client._sasl_oauth_token_provider is provider
    await consumer.stop()


def test_plaintext_kafka_has_no_tls_or_sasl() -> None:
    assert kafka_security_kwargs(KafkaSettings()) == {"security_protocol": "PLAINTEXT"}
