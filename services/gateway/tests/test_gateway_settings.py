"""Settings from the environment keep the gateway's defaults when one nested value is set."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from urr_common.settings import SettingsError, load_settings
from urr_gateway.proxy import upstream_urls
from urr_gateway.ratelimit.config import WindowLimit
from urr_gateway.routing import ROUTES, Upstream
from urr_gateway.settings import GatewaySettings


def test_defaults():
    settings = load_settings(GatewaySettings)
    assert settings.service_name == "gateway"
    assert settings.http.port == 3001
    assert settings.access_trust.issuer == "urr-auth"
    assert settings.access_trust.audience == "urr"
    assert settings.access_trust.jwks_url == "http://127.0.0.1:3005/.well-known/jwks.json"
    assert settings.entry_trust.issuer == "urr-queue"
    assert settings.entry_trust.audience == "urr-entry"
    assert settings.entry_trust.jwks_url == "http://127.0.0.1:3007/.well-known/jwks.json"
    assert settings.upstreams.ticket == "http://127.0.0.1:3002"
    assert (settings.internal.host, settings.internal.port) == ("127.0.0.1", 3011)
    assert settings.workers == 1
    assert (settings.http.server, settings.http.gc_gen0_threshold) == ("protocol", 20_000)


@pytest.mark.parametrize("value", ["-1", "1000001", "lots"])
def test_a_bad_gc_threshold_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("URR_HTTP__GC_GEN0_THRESHOLD", value)
    with pytest.raises(SettingsError, match="URR_HTTP__GC_GEN0_THRESHOLD"):
        load_settings(GatewaySettings)


def test_one_nested_variable_keeps_the_other_defaults(monkeypatch):
    monkeypatch.setenv("URR_HTTP__HOST", "0.0.0.0")
    monkeypatch.setenv("URR_ACCESS_TRUST__JWKS_URL", "http://auth:3005/jwks")
    monkeypatch.setenv("URR_ENTRY_TRUST__LEEWAY_S", "5")
    monkeypatch.setenv("URR_WORKERS", "4")
    monkeypatch.setenv("URR_UPSTREAMS__QUEUE", "http://queue:3007/")
    settings = load_settings(GatewaySettings)
    assert (settings.http.host, settings.http.port) == ("0.0.0.0", 3001)
    assert settings.access_trust.issuer == "urr-auth"
    assert settings.access_trust.jwks_url == "http://auth:3005/jwks"
    assert settings.entry_trust.audience == "urr-entry"
    assert settings.workers == 4
    assert settings.upstreams.queue == "http://queue:3007"


def test_bad_values_name_the_variable(monkeypatch):
    monkeypatch.setenv("URR_UPSTREAMS__TICKET", "ftp://nope")
    with pytest.raises(SettingsError, match="URR_UPSTREAMS__TICKET"):
        load_settings(GatewaySettings)


def test_the_log_and_ratelimit_admin_upstreams(monkeypatch):
    settings = load_settings(GatewaySettings)
    assert settings.upstreams.admission_log == "http://127.0.0.1:3030"
    assert settings.upstreams.ratelimit_admin == "http://127.0.0.1:3040"
    monkeypatch.setenv("URR_UPSTREAMS__ADMISSION_LOG", "http://admission-log:3030/")
    monkeypatch.setenv("URR_UPSTREAMS__RATELIMIT_ADMIN", "http://ratelimit-admin:3040")
    settings = load_settings(GatewaySettings)
    assert settings.upstreams.admission_log == "http://admission-log:3030"
    assert settings.upstreams.ratelimit_admin == "http://ratelimit-admin:3040"
    monkeypatch.setenv("URR_UPSTREAMS__ADMISSION_LOG", "admission-log:3030")
    with pytest.raises(SettingsError, match="URR_UPSTREAMS__ADMISSION_LOG"):
        load_settings(GatewaySettings)
    monkeypatch.setenv("URR_UPSTREAMS__ADMISSION_LOG", "http://admission-log:3030")
    monkeypatch.setenv("URR_UPSTREAMS__RATELIMIT_ADMIN", "redis://nope")
    with pytest.raises(SettingsError, match="URR_UPSTREAMS__RATELIMIT_ADMIN"):
        load_settings(GatewaySettings)


def test_every_routed_upstream_has_a_url():
    urls = upstream_urls(load_settings(GatewaySettings))
    assert set(urls) == set(Upstream)
    assert urls[Upstream.ADMISSION_LOG] == "http://127.0.0.1:3030"
    assert urls[Upstream.RATELIMIT_ADMIN] == "http://127.0.0.1:3040"
    assert {route.upstream for route in ROUTES} - {None} <= set(urls)


@pytest.mark.parametrize("value", ["0", "-1", "61", "soon"])
def test_a_usage_flush_interval_out_of_range_names_the_variable(monkeypatch, value):
    monkeypatch.setenv("URR_RATE_LIMIT__USAGE_FLUSH_S", value)
    with pytest.raises(SettingsError, match="URR_RATE_LIMIT__USAGE_FLUSH_S"):
        load_settings(GatewaySettings)


def test_the_usage_flush_interval_is_read(monkeypatch):
    monkeypatch.setenv("URR_RATE_LIMIT__USAGE_FLUSH_S", "0.5")
    assert load_settings(GatewaySettings).rate_limit.usage_flush_s == 0.5


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("URR_IDENTITY__TTL_S", "600", "URR_IDENTITY__TTL_S"),
        ("URR_IDENTITY__TTL_S", "1", "URR_IDENTITY__TTL_S"),
        ("URR_IDENTITY__REUSE_S", "-1", "URR_IDENTITY__REUSE_S"),
        ("URR_IDENTITY__REUSE_S", "4", "at most half of URR_IDENTITY__TTL_S"),
        ("URR_IDENTITY__KEY_ID", "../../etc/key", "URR_IDENTITY__KEY_ID"),
        ("URR_IDENTITY__KEY_ID", "", "URR_IDENTITY__KEY_ID"),
    ],
)
def test_identity_assertion_settings_are_checked(monkeypatch, variable, value, message):
    assert load_settings(GatewaySettings).identity.ttl_s == 15
    monkeypatch.setenv("URR_IDENTITY__TTL_S", "6")
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=message):
        load_settings(GatewaySettings)


def test_the_identity_key_tool_makes_a_key_upstreams_can_trust(tmp_path, monkeypatch, capsys):
    from urr_common.upstream_security import UpstreamIdentitySettings
    from urr_gateway.identity_key import main

    private = tmp_path / "keys" / "identity" / "gw-7.pem"
    monkeypatch.setenv("URR_IDENTITY__PRIVATE_KEY_FILE", str(private))
    monkeypatch.setenv("URR_IDENTITY__KEY_ID", "gw-7")
    main()
    first = private.read_bytes()
    main()  # idempotent: the key stays
    assert private.read_bytes() == first
    assert "gw-7" in capsys.readouterr().out
    trusted = UpstreamIdentitySettings(public_key_files=[private.parent / "public" / "*.pem"])
    (key,) = trusted.key_set()
    assert key.kid == "gw-7"
    assert b"PRIVATE" not in (private.parent / "public" / "gw-7.pem").read_bytes()


def test_check_api_callers_are_validated(monkeypatch):
    assert load_settings(GatewaySettings).internal.callers == {}
    monkeypatch.setenv("URR_INTERNAL__CALLERS", '{"billing": "short"}')
    with pytest.raises(SettingsError, match="URR_INTERNAL__CALLERS"):
        load_settings(GatewaySettings)
    monkeypatch.setenv("URR_INTERNAL__CALLERS", '{"billing": "' + "b" * 32 + '"}')
    assert set(load_settings(GatewaySettings).internal.callers) == {"billing"}


@pytest.mark.parametrize("name", ["burst\n", "Burst", "9lives", "a" * 33, "a b", ""])
def test_a_policy_name_that_would_not_be_a_clean_header_token_is_refused(name: str) -> None:
    # The name is written into RateLimit-Policy; a trailing newline passed ``re.match`` with
    # ``$`` and would have split the header.
    with pytest.raises(ValidationError):
        WindowLimit(limit=1, window_s=1, name=name)
    assert WindowLimit(limit=1, window_s=1, name="burst-1s").name == "burst-1s"
