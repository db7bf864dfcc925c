from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from urr_common.settings import (
    AwsSettings,
    HttpSettings,
    PostgresSettings,
    RedisSettings,
    ServiceSettings,
    SettingsError,
    TokenKeySettings,
    load_settings,
)


class ExampleSettings(ServiceSettings):
    service_name: str = "example"
    http: HttpSettings = Field(default_factory=lambda: HttpSettings(port=3999))
    redis: RedisSettings = Field(default_factory=RedisSettings)
    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    access_tokens: TokenKeySettings = Field(default_factory=TokenKeySettings)
    aws: AwsSettings = Field(default_factory=AwsSettings)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("URR_"):
            monkeypatch.delenv(name)


def test_defaults_need_no_environment() -> None:
    settings = load_settings(ExampleSettings)
    assert settings.http.port == 3999
    assert settings.redis.url == "redis://127.0.0.1:6379/0"
    assert settings.environment == "local"


def test_nested_values_come_from_prefixed_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_HTTP__PORT", "4100")
    monkeypatch.setenv("URR_REDIS__URL", "redis://10.0.0.5:6380/2")
    monkeypatch.setenv("URR_REDIS__CLUSTER", "true")
    monkeypatch.setenv("URR_ACCESS_TOKENS__PREVIOUS_PUBLIC_KEY_FILES", '["a.pem", "b.pem"]')
    settings = load_settings(ExampleSettings)
    assert settings.http.port == 4100
    assert settings.redis.cluster is True
    assert settings.access_tokens.previous_public_key_files == [Path("a.pem"), Path("b.pem")]


def test_overrides_win_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_SERVICE_NAME", "from-env")
    assert load_settings(ExampleSettings, service_name="override").service_name == "override"


def test_invalid_values_name_the_variable_to_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_HTTP__PORT", "70000")
    monkeypatch.setenv("URR_REDIS__URL", "http://wrong")
    monkeypatch.setenv("URR_ENVIRONMENT", "moon")
    with pytest.raises(SettingsError) as caught:
        load_settings(ExampleSettings)
    message = str(caught.value)
    assert message.startswith("invalid configuration for ExampleSettings:")
    assert "URR_HTTP__PORT" in message
    assert "70000" in message
    assert "URR_REDIS__URL: Value error, must start with redis://" in message
    assert "URR_ENVIRONMENT" in message


def test_secret_values_are_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_POSTGRES__DSN", "mysql://admin:hunter2@db/urr")
    with pytest.raises(SettingsError) as caught:
        load_settings(ExampleSettings)
    assert "URR_POSTGRES__DSN" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_settings_are_frozen() -> None:
    settings = load_settings(ExampleSettings)
    with pytest.raises(ValueError, match="frozen"):
        settings.service_name = "changed"  # type: ignore[misc]


def test_secret_dsn_is_hidden_in_repr() -> None:
    settings = load_settings(
        ExampleSettings, postgres=PostgresSettings(dsn="postgresql://u:pw@h/db")
    )
    assert "pw@" not in repr(settings)
    assert settings.postgres.dsn.get_secret_value() == "postgresql://u:pw@h/db"


def test_one_nested_variable_keeps_the_services_block_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("URR_HTTP__HOST", "0.0.0.0")
    settings = load_settings(ExampleSettings)
    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 3999


def test_nested_overrides_keep_the_services_block_defaults() -> None:
    settings = load_settings(ExampleSettings, http={"drain_delay_s": 2})
    assert settings.http.port == 3999
    assert settings.http.drain_delay_s == 2


def test_the_metrics_port_sits_beside_the_public_one_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert load_settings(ExampleSettings).metrics_port == 4999
    assert load_settings(ExampleSettings).metrics.host == "127.0.0.1"
    monkeypatch.setenv("URR_HTTP__PORT", "0")
    assert load_settings(ExampleSettings).metrics_port == 0  # tests: a free port
    monkeypatch.setenv("URR_METRICS__PORT", "9464")
    monkeypatch.setenv("URR_METRICS__HOST", "0.0.0.0")
    settings = load_settings(ExampleSettings)
    assert (settings.metrics.host, settings.metrics_port) == ("0.0.0.0", 9464)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"URR_METRICS__PORT": "3999"}, "must differ from URR_HTTP__PORT"),
        ({"URR_HTTP__PORT": "65000"}, "set URR_METRICS__PORT (0-65535) explicitly"),
        ({"URR_METRICS__PORT": "70000"}, "URR_METRICS__PORT"),
        ({"URR_METRICS__ENABLED": "maybe"}, "URR_METRICS__ENABLED"),
    ],
)
def test_bad_metrics_settings_stop_the_start_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError) as error:
        load_settings(ExampleSettings)
    assert message in str(error.value)


def test_dynamodb_has_its_own_endpoint_when_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_AWS__ENDPOINT_URL", "http://127.0.0.1:5000")
    assert load_settings(ExampleSettings).aws.endpoint_for("dynamodb") == "http://127.0.0.1:5000"
    monkeypatch.setenv("URR_AWS__DYNAMODB_ENDPOINT_URL", "http://127.0.0.1:4567")
    aws = load_settings(ExampleSettings).aws
    assert aws.endpoint_for("dynamodb") == "http://127.0.0.1:4567"
    assert aws.endpoint_for("sqs") == "http://127.0.0.1:5000"


def test_a_dynamodb_endpoint_that_is_no_url_stops_the_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("URR_AWS__DYNAMODB_ENDPOINT_URL", "127.0.0.1:4567")
    with pytest.raises(SettingsError) as caught:
        load_settings(ExampleSettings)
    assert "URR_AWS__DYNAMODB_ENDPOINT_URL: Value error, must be an http:// or https:// URL" in (
        str(caught.value)
    )
