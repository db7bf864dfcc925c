"""The stack's settings from the environment, and the local keys and admin password."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from pydantic import SecretStr

from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import KeySet, TokenSigner, TokenVerifier, load_verification_keys
from urr_common.upstream_security import MIN_SECRET_LENGTH, InternalListenerSettings
from urr_devstack.__main__ import main
from urr_devstack.keys import (
    KEY_KINDS,
    AdminSettingsError,
    chosen_admin,
    ensure_admin_password,
    ensure_service_secret,
    ensure_signing_keys,
)
from urr_devstack.settings import DevstackSettings, find_repo_root


def test_devstack_settings_read_ports_and_overrides(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("URR_DEVSTACK__PORTS__REDIS", "16379")
    monkeypatch.setenv("URR_DEVSTACK__SERVICE_PORTS__AUTH", "14005")
    monkeypatch.setenv("URR_DEVSTACK__SKIP_SERVICES", '["edge"]')
    monkeypatch.setenv("URR_DEVSTACK__STATE_DIR", str(tmp_path / "state"))
    settings = load_settings(DevstackSettings)
    assert settings.ports.redis == 16379
    assert settings.ports.postgres == 5432
    assert settings.service_ports == {"auth": 14005}
    assert settings.skip_services == ["edge"]
    assert settings.resolved_state_dir() == tmp_path / "state"


def test_devstack_settings_name_the_bad_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_DEVSTACK__PORTS__MOTO", "not-a-port")
    with pytest.raises(SettingsError, match="URR_DEVSTACK__PORTS__MOTO"):
        load_settings(DevstackSettings)


def test_devstack_settings_refuse_a_misspelt_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_DEVSTACK__PORTS__REDDIS", "1")
    with pytest.raises(SettingsError, match="REDDIS"):
        load_settings(DevstackSettings)


def test_devstack_settings_refuse_one_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_DEVSTACK__PORTS__KAFKA", "6379")
    with pytest.raises(SettingsError, match=r"ports.kafka and ports.redis both use port 6379"):
        load_settings(DevstackSettings)


def test_devstack_default_state_dir_is_in_the_repo(tmp_path: Path) -> None:
    (tmp_path / "uv.lock").write_text("")
    (tmp_path / "pyproject.toml").write_text("")
    nested = tmp_path / "services" / "x"
    nested.mkdir(parents=True)
    assert find_repo_root(nested) == tmp_path
    assert DevstackSettings().resolved_state_dir(nested) == tmp_path / ".urr"


def test_devstack_keys_are_made_once_private_and_paired(tmp_path: Path) -> None:
    keys = ensure_signing_keys(tmp_path / "keys")
    assert sorted(keys) == sorted(KEY_KINDS)
    for kind, key in keys.items():
        assert key.private_file == tmp_path / "keys" / kind / "local-1.pem"
        assert key.public_file == tmp_path / "keys" / kind / "public" / "local-1.pem"
        assert stat.S_IMODE(key.private_file.stat().st_mode) == 0o600
        assert b"PRIVATE KEY" not in key.public_file.read_bytes()
    first = {kind: key.private_file.read_bytes() for kind, key in keys.items()}
    again = ensure_signing_keys(tmp_path / "keys")
    assert {kind: key.private_file.read_bytes() for kind, key in again.items()} == first


def test_devstack_public_key_verifies_what_the_private_key_signs(tmp_path: Path) -> None:
    from urr_common.tokens import SigningKey

    key = ensure_signing_keys(tmp_path / "keys")["vwr"]
    signer = SigningKey.from_pem(key.private_file.read_bytes(), key.key_id)
    token = TokenSigner(signer, "urr-vwr", "urr-vwr", 60).sign("req-1", {"position": 7})
    verifier = TokenVerifier(
        KeySet(load_verification_keys([key.public_file])), "urr-vwr", "urr-vwr"
    )
    assert verifier.verify(token)["position"] == 7


def test_devstack_public_key_is_rewritten_when_stale(tmp_path: Path) -> None:
    key = ensure_signing_keys(tmp_path / "keys")["access"]
    good = key.public_file.read_bytes()
    key.public_file.write_bytes(b"stale")
    ensure_signing_keys(tmp_path / "keys")
    assert key.public_file.read_bytes() == good


def test_devstack_admin_password_is_generated_once(tmp_path: Path) -> None:
    path = tmp_path / "admin-password"
    password = ensure_admin_password(path)
    assert len(password) >= 20
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_admin_password(path) == password


def test_devstack_service_secret_is_generated_once_and_long_enough(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "queue-ticket"
    secret = ensure_service_secret(path)
    assert len(secret) >= MIN_SECRET_LENGTH
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert ensure_service_secret(path) == secret
    # The queue accepts it as a caller's credential.
    assert InternalListenerSettings(callers={"ticket": SecretStr(secret)}).callers


@pytest.mark.parametrize("value", ["0", "-1", "121", "soon"])
def test_devstack_drain_timeout_is_validated(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("URR_DEVSTACK__DRAIN_TIMEOUT_S", value)
    with pytest.raises(SettingsError, match="URR_DEVSTACK__DRAIN_TIMEOUT_S"):
        load_settings(DevstackSettings)


def test_devstack_drain_timeout_is_read(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings(DevstackSettings).drain_timeout_s == 5.0
    monkeypatch.setenv("URR_DEVSTACK__DRAIN_TIMEOUT_S", "2.5")
    assert load_settings(DevstackSettings).drain_timeout_s == 2.5


def test_devstack_the_users_own_admin_wins_over_the_generated_one() -> None:
    chosen = {
        "URR_BOOTSTRAP_ADMIN_EMAIL": " me@example.com ",
        "URR_BOOTSTRAP_ADMIN_PASSWORD": "a long secret",
    }
    assert chosen_admin(chosen) == ("me@example.com", "a long secret")
    # Neither set (or set empty): the stack makes its own.
    assert chosen_admin({}) is None
    assert (
        chosen_admin({"URR_BOOTSTRAP_ADMIN_EMAIL": "", "URR_BOOTSTRAP_ADMIN_PASSWORD": ""}) is None
    )


@pytest.mark.parametrize(
    ("environ", "missing"),
    [
        ({"URR_BOOTSTRAP_ADMIN_EMAIL": "me@example.com"}, "URR_BOOTSTRAP_ADMIN_PASSWORD"),
        ({"URR_BOOTSTRAP_ADMIN_PASSWORD": "a long secret"}, "URR_BOOTSTRAP_ADMIN_EMAIL"),
    ],
)
def test_devstack_half_an_admin_is_refused(environ: dict[str, str], missing: str) -> None:
    with pytest.raises(AdminSettingsError, match=f"{missing} is not set"):
        chosen_admin(environ)


def test_devstack_up_with_half_an_admin_stops_before_starting_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("URR_DEVSTACK__STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("URR_BOOTSTRAP_ADMIN_EMAIL", "me@example.com")
    monkeypatch.delenv("URR_BOOTSTRAP_ADMIN_PASSWORD", raising=False)
    assert main(["up", "--no-services"]) == 2
    assert "URR_BOOTSTRAP_ADMIN_PASSWORD is not set" in capsys.readouterr().err
    assert not (tmp_path / "state" / "devstack.json").exists()


def test_devstack_dynamodb_stand_in_is_dynalite_unless_moto_is_asked_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings(DevstackSettings)
    assert (settings.dynamodb, settings.ports.dynalite) == ("dynalite", 4567)
    monkeypatch.setenv("URR_DEVSTACK__DYNAMODB", "moto")
    monkeypatch.setenv("URR_DEVSTACK__PORTS__DYNALITE", "14567")
    settings = load_settings(DevstackSettings)
    assert (settings.dynamodb, settings.ports.dynalite) == ("moto", 14567)
    monkeypatch.setenv("URR_DEVSTACK__DYNAMODB", "localstack")
    with pytest.raises(SettingsError, match="URR_DEVSTACK__DYNAMODB"):
        load_settings(DevstackSettings)
    monkeypatch.setenv("URR_DEVSTACK__DYNAMODB", "dynalite")
    monkeypatch.setenv("URR_DEVSTACK__PORTS__DYNALITE", "5000")
    with pytest.raises(SettingsError, match="both use port 5000"):
        load_settings(DevstackSettings)
