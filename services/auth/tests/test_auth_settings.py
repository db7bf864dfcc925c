"""AuthSettings: defaults, environment names, and the combinations refused at start."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from urr_auth.settings import AuthSettings
from urr_common.settings import SettingsError, load_settings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("URR_"):
            monkeypatch.delenv(name)


def test_defaults_match_the_design() -> None:
    settings = load_settings(AuthSettings)

    assert settings.service_name == "auth"
    assert settings.http.port == 3005
    assert settings.http.max_body_bytes == 64 * 1024
    assert settings.access_tokens.issuer == "urr-auth"
    assert settings.access_tokens.audience == "urr"
    assert settings.access_tokens.private_key_file == Path(".urr/keys/access/local-1.pem")
    assert settings.access_tokens.key_id == "local-1"
    assert settings.cookie_name == "access_token"
    assert settings.cookie_secure is False
    assert settings.bootstrap_admin_email is None
    assert settings.bootstrap_admin_password is None


def test_setting_one_variable_of_a_block_keeps_auths_defaults_for_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("URR_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("URR_ACCESS_TOKENS__TTL_S", "120")
    monkeypatch.setenv("URR_ACCESS_TOKENS__PREVIOUS_PUBLIC_KEY_FILES", '["/keys/old.pem"]')

    settings = load_settings(AuthSettings)

    assert settings.http.host == "0.0.0.0"
    assert settings.http.port == 3005
    assert settings.access_tokens.ttl_s == 120
    assert settings.access_tokens.issuer == "urr-auth"
    assert settings.access_tokens.private_key_file == Path(".urr/keys/access/local-1.pem")
    assert settings.access_tokens.previous_public_key_files == [Path("/keys/old.pem")]


def test_the_bootstrap_admin_comes_from_its_two_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("URR_BOOTSTRAP_ADMIN_EMAIL", "Admin@Example.com")
    monkeypatch.setenv("URR_BOOTSTRAP_ADMIN_PASSWORD", "admin password")
    monkeypatch.setenv("URR_COOKIE_SECURE", "true")
    monkeypatch.setenv("URR_ARGON2__TIME_COST", "4")

    settings = load_settings(AuthSettings)

    assert settings.bootstrap_admin_email == "admin@example.com"
    assert settings.bootstrap_admin_password is not None
    assert settings.bootstrap_admin_password.get_secret_value() == "admin password"
    assert "admin password" not in repr(settings)
    assert settings.cookie_secure is True
    assert settings.argon2.time_cost == 4


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        ({"URR_BOOTSTRAP_ADMIN_EMAIL": "a@example.com"}, "or neither"),
        ({"URR_BOOTSTRAP_ADMIN_PASSWORD": "long enough"}, "or neither"),
        (
            {"URR_BOOTSTRAP_ADMIN_EMAIL": "nope", "URR_BOOTSTRAP_ADMIN_PASSWORD": "long enough"},
            "URR_BOOTSTRAP_ADMIN_EMAIL",
        ),
        (
            {
                "URR_BOOTSTRAP_ADMIN_EMAIL": "a@example.com",
                "URR_BOOTSTRAP_ADMIN_PASSWORD": "tiny-pw",
            },
            "URR_BOOTSTRAP_ADMIN_PASSWORD",
        ),
        ({"URR_ENVIRONMENT": "prod"}, "URR_COOKIE_SECURE"),
        ({"URR_ARGON2__MEMORY_COST_KIB": "16", "URR_ARGON2__PARALLELISM": "4"}, "8 x parallelism"),
        ({"URR_HTTP__PORT": "not-a-port"}, "URR_HTTP__PORT"),
        ({"URR_COOKIE_NAME": "bad name;"}, "URR_COOKIE_NAME"),
        ({"URR_COOKIE_DOMAIN": "urr.example; Path=/x"}, "URR_COOKIE_DOMAIN"),
        ({"URR_POSTGRES__DSN": "mysql://x"}, "URR_POSTGRES__DSN"),
    ],
)
def test_bad_configurations_are_refused_with_a_readable_message(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], expected: str
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)

    with pytest.raises(SettingsError, match=expected) as caught:
        load_settings(AuthSettings)

    # Secrets are never echoed back, even when they are the bad value.
    assert "long enough" not in str(caught.value)
    assert "tiny-pw" not in str(caught.value)
