"""Zero trust at the gateway's front door (issue 16): each attack replayed against real servers.

Refusals are limited and cheap (a forged token is anonymous for the limiter, refused after it,
and remembered); a junk cookie locks nobody out; cookie-authenticated changes need our origin;
the client address comes from trusted proxies by CIDR; an origin secret guards the CDN path;
every answer carries the security headers.
"""

from __future__ import annotations

import ipaddress
import time
from typing import Any

import pytest

from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import (
    KeySet,
    ParsedJws,
    SigningKey,
    TokenError,
    TokenRejection,
    TokenSigner,
    TokenVerifier,
)
from urr_gateway.context import Identity
from urr_gateway.filters.jwt_auth import ACCESS_REQUIRED_CLAIMS, identity_from_claims
from urr_gateway.jwks import JwksKeySource
from urr_gateway.ratelimit.config import RateLimitSettings
from urr_gateway.refusedcache import RefusedTokenCache
from urr_gateway.responseheaders import clearing_cookie
from urr_gateway.settings import GatewaySettings
from urr_gateway.tokencache import VerifiedTokenCache, token_digest
from urr_gateway.trust import ProxyTrust, TrustSettings, canonical_ip_text
from urr_gateway.verification import CachedTokenVerifier

#: Exact counts need room for a slow Redis reply on a shared machine (see test_gateway_wired).
EXACT_LIMITS = RateLimitSettings(budget_ms=2000, congestion_cap_ms=5000)
SITE = "http://127.0.0.1:8000"
SECRET_A = "a" * 24
SECRET_B = "b" * 24


def forged_token(kid: str = "access-1", user: str = "victim") -> str:
    """Signed with a key nobody trusts, under the kid the gateway knows."""
    signer = TokenSigner(key=SigningKey.generate(kid), issuer="urr-auth", audience="urr", ttl_s=300)
    return signer.sign(user, {"email": "x@example.com", "role": "admin"})


# ---- 1. refusals are limited and cheap -------------------------------------------------------


async def test_a_forged_token_is_anonymous_for_the_limiter_and_refused_after_it(stack_factory):
    stack = await stack_factory(wired=True, rate_limit=EXACT_LIMITS)
    headers = {"Authorization": f"Bearer {forged_token()}"}
    for _ in range(20):
        refused = await stack.client.post("/api/v1/auth/login", headers=headers)
        assert refused.status == 401
        assert (await refused.json())["code"] == "invalid_token"
        assert refused.headers["RateLimit-Policy"] == '"auth";q=20;w=60'
    limited = await stack.client.post("/api/v1/auth/login", headers=headers)
    assert limited.status == 429
    assert limited.headers["RateLimit"].startswith('"auth";r=0;t=')
    # the address's anonymous bucket is what was spent: a plain anonymous login is limited too
    assert (await stack.client.post("/api/v1/auth/login")).status == 429
    assert stack.auth.requests == []


async def test_health_endpoints_never_verify_tokens(stack):
    headers = {"Authorization": f"Bearer {forged_token()}"}
    cookies = {"access_token": "junk"}
    for path in ("/health/live", "/health/ready"):
        response = await stack.client.get(path, headers=headers, cookies=cookies)
        assert response.status in (200, 503), path  # ready may wait for Redis; never 401
        assert response.status != 401


class CountingVerifier(TokenVerifier):
    calls = 0

    def verify_parsed(self, parsed: ParsedJws, *, now: float | None = None) -> dict[str, Any]:
        # What ``verify`` and the gateway's ``CachedTokenVerifier`` both end in.
        CountingVerifier.calls += 1
        return super().verify_parsed(parsed, now=now)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _verifier(
    trusted: SigningKey, refused: RefusedTokenCache
) -> tuple[CachedTokenVerifier[Identity], type[CountingVerifier]]:
    CountingVerifier.calls = 0
    source = JwksKeySource("access", None, [trusted.verification_key()])
    checker = CountingVerifier(
        keys=KeySet(), issuer="urr-auth", audience="urr", required_claims=ACCESS_REQUIRED_CLAIMS
    )
    cache: VerifiedTokenCache[Identity] = VerifiedTokenCache(100, 30.0)
    return CachedTokenVerifier(
        source, checker, identity_from_claims, cache, refused
    ), CountingVerifier


async def test_a_repeated_forged_token_is_verified_once_then_looked_up():
    clock = Clock()
    verifier, counter = _verifier(
        SigningKey.generate("access-1"), RefusedTokenCache(10, 5.0, clock)
    )
    token = forged_token()
    for _ in range(50):
        with pytest.raises(TokenError) as refused:
            await verifier.verify(token)
        assert refused.value.reason is TokenRejection.BAD_SIGNATURE
    assert counter.calls == 1
    clock.now += 5.0  # the refusal is remembered for ttl_s only
    with pytest.raises(TokenError):
        await verifier.verify(token)
    assert counter.calls == 2


async def test_an_unknown_kid_is_never_remembered_so_a_rotated_in_key_works_at_once():
    cache = RefusedTokenCache(10, 60.0)
    verifier, _ = _verifier(SigningKey.generate("access-1"), cache)
    with pytest.raises(TokenError) as refused:
        await verifier.verify(forged_token(kid="next-key"))
    assert refused.value.reason is TokenRejection.UNKNOWN_KEY
    assert len(cache) == 0


def test_the_refused_cache_is_bounded_and_keeps_the_recently_seen():
    cache = RefusedTokenCache(3, 60.0)
    digests = [token_digest(f"t{i}") for i in range(4)]
    for digest in digests[:3]:
        cache.put(digest, TokenRejection.BAD_SIGNATURE)
    assert cache.get(digests[0]) is TokenRejection.BAD_SIGNATURE  # now the most recent
    cache.put(digests[3], TokenRejection.EXPIRED)
    assert len(cache) == 3
    assert cache.get(digests[1]) is None  # the least recently seen went
    assert cache.get(digests[0]) is TokenRejection.BAD_SIGNATURE
    assert RefusedTokenCache(0, 60.0).enabled is False


# ---- 5. a junk or stale cookie locks nobody out ----------------------------------------------


def _cleared(response: Any) -> bool:
    return any(
        value.startswith("access_token=") and "Max-Age=0" in value
        for value in response.headers.getall("Set-Cookie", ())
    )


@pytest.mark.parametrize("path", ["/api/v1/auth/login", "/api/v1/auth/logout"])
async def test_login_and_logout_work_with_a_junk_cookie_which_is_cleared(stack, path):
    response = await stack.client.post(
        path, cookies={"access_token": "junk.junk.junk"}, headers={"Origin": SITE}
    )
    assert response.status == 200, await response.text()
    assert _cleared(response)
    seen = stack.headers_of(await response.json())
    assert "authorization" not in seen
    assert "x-urr-identity" not in seen


async def test_an_expired_cookie_is_anonymous_and_cleared(stack):
    expired = stack.access.signer.sign(
        "u1", {"email": "u1@example.com", "role": "user"}, ttl_s=30, now=time.time() - 600
    )
    public = await stack.client.get("/api/v1/events", cookies={"access_token": expired})
    assert public.status == 200
    assert _cleared(public)
    login_needed = await stack.client.get(
        "/api/v1/queue/e1/status", cookies={"access_token": expired}
    )
    assert login_needed.status == 401
    assert (await login_needed.json())["code"] == "login_required"
    assert _cleared(login_needed)


async def test_a_valid_cookie_is_not_cleared_and_a_bad_bearer_header_is_still_refused(stack):
    good = await stack.client.get(
        "/api/v1/events", cookies={"access_token": stack.access_token("u1")}
    )
    assert good.status == 200
    assert not good.headers.getall("Set-Cookie", [])
    bad = await stack.client.get("/api/v1/events", headers={"Authorization": "Bearer junk"})
    assert bad.status == 401
    assert not _cleared(bad)


def test_the_clearing_cookie_matches_the_one_auth_sets():
    cleared = clearing_cookie("urr.example.com", secure=True)
    parts = [part.strip() for part in cleared.split(";")]
    assert parts[0] == 'access_token=""'
    assert {"Path=/", "Max-Age=0", "Domain=urr.example.com", "HttpOnly", "Secure"} <= set(parts)
    assert "SameSite=Lax" in parts
    assert "Secure" not in clearing_cookie(None, secure=False)
    assert TrustSettings(access_cookie_domain=".URR.example.com").access_cookie_domain == (
        "urr.example.com"
    )


# ---- 6. CSRF ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({}, 403),
        ({"Origin": "https://evil.example"}, 403),
        ({"Origin": "null"}, 403),
        ({"Sec-Fetch-Site": "cross-site"}, 403),
        ({"Origin": SITE}, 200),
        ({"Sec-Fetch-Site": "same-origin"}, 200),
    ],
)
async def test_cookie_authenticated_changes_need_the_site_origin(stack, headers, status):
    cookies = {"access_token": stack.access_token("victim")}
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        response = await stack.client.request(
            method, "/api/v1/queue/e1/leave", cookies=cookies, headers=headers
        )
        assert response.status == status, (method, headers)
        if status == 403:
            body = await response.json()
            assert body["code"] == "csrf_refused"
    if status == 403:
        assert stack.queue.requests == []


async def test_reads_and_bearer_clients_need_no_origin(stack):
    cookies = {"access_token": stack.access_token("u1")}
    assert (await stack.client.get("/api/v1/queue/e1/status", cookies=cookies)).status == 200
    bearer = await stack.client.post("/api/v1/queue/e1/leave", headers=stack.auth_headers("u1"))
    assert bearer.status == 200


async def test_site_origins_come_from_settings(stack_factory):
    stack = await stack_factory(trust=TrustSettings(site_origins=["https://tickets.example.com"]))
    cookies = {"access_token": stack.access_token("u1")}
    ours = {"Origin": "https://tickets.example.com"}
    local = {"Origin": SITE}
    leave = "/api/v1/queue/e1/leave"
    assert (await stack.client.post(leave, cookies=cookies, headers=ours)).status == 200
    assert (await stack.client.post(leave, cookies=cookies, headers=local)).status == 403


# ---- 3. client address by trust, not by count ------------------------------------------------


async def test_a_direct_caller_cannot_name_its_own_address(stack_factory):
    """The issue's attack: 200 logins with a fresh X-Forwarded-For each all passed AUTH 20/min."""
    stack = await stack_factory(
        wired=True, rate_limit=EXACT_LIMITS, trust=TrustSettings(proxy_cidrs=["10.0.0.0/8"])
    )
    statuses = []
    for i in range(25):
        headers = {"X-Forwarded-For": f"198.51.100.{i}", "X-Forwarded-Proto": "https"}
        statuses.append((await stack.client.post("/api/v1/auth/login", headers=headers)).status)
    assert statuses.count(200) == 20
    assert statuses[20:] == [429] * 5
    seen = stack.headers_of(stack.auth.requests[0])
    assert seen["x-forwarded-for"] == ["127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["http"]


async def test_behind_trusted_proxies_the_walk_stops_at_the_first_untrusted_address(stack_factory):
    stack = await stack_factory(trust=TrustSettings(proxy_cidrs=["127.0.0.0/8", "10.0.0.0/8"]))
    response = await stack.client.get(
        "/api/v1/events",
        headers={"X-Forwarded-For": "6.6.6.6, 203.0.113.7, 10.1.2.3", "X-Forwarded-Proto": "https"},
    )
    seen = stack.headers_of(await response.json())
    assert seen["x-forwarded-for"] == ["203.0.113.7, 10.1.2.3, 127.0.0.1"]
    assert seen["x-forwarded-proto"] == ["https"]


async def test_an_ipv6_client_is_limited_by_its_slash_64(stack_factory):
    stack = await stack_factory(
        wired=True, rate_limit=EXACT_LIMITS, trust=TrustSettings(proxy_cidrs=["127.0.0.0/8"])
    )
    for i in range(1, 21):
        headers = {"X-Forwarded-For": f"2001:db8:0:7::{i:x}"}
        assert (await stack.client.post("/api/v1/auth/login", headers=headers)).status == 200
    same_64 = {"X-Forwarded-For": "2001:db8:0:7:ffff:ffff:ffff:ffff"}
    assert (await stack.client.post("/api/v1/auth/login", headers=same_64)).status == 429
    other_64 = {"X-Forwarded-For": "2001:db8:0:8::1"}
    assert (await stack.client.post("/api/v1/auth/login", headers=other_64)).status == 200


async def test_the_origin_secret_is_required_when_configured_and_rotates(stack_factory):
    trust = TrustSettings(origin_secrets=[SECRET_A, SECRET_B])
    stack = await stack_factory(trust=trust)
    missing = await stack.client.get("/api/v1/events")
    assert missing.status == 403
    assert (await missing.json())["code"] == "origin_unverified"
    wrong = await stack.client.get("/api/v1/events", headers={"X-Origin-Verify": "c" * 24})
    assert wrong.status == 403
    for secret in (SECRET_A, SECRET_B):
        response = await stack.client.get("/api/v1/events", headers={"X-Origin-Verify": secret})
        assert response.status == 200
        assert "x-origin-verify" not in stack.headers_of(await response.json())
    assert (await stack.client.get("/health/live")).status == 200
    assert len(stack.ticket.requests) == 2


@pytest.mark.parametrize("target", ["/health/../api/v1/events", "/health/%2e%2e/api/v1/events"])
async def test_a_health_path_cannot_carry_an_api_request_past_the_origin_secret(
    stack_factory, raw_request, target
):
    stack = await stack_factory(trust=TrustSettings(origin_secrets=[SECRET_A]))
    status, answer = await raw_request(stack.client, target)
    assert status in (400, 403), answer
    assert stack.ticket.requests == []


# ---- 8. security response headers -------------------------------------------------------------


SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


async def test_every_answer_carries_the_security_headers(stack):
    answers = [
        await stack.client.get("/api/v1/events"),  # proxied (streamed)
        await stack.client.get("/api/v1/queue/e1/status"),  # a problem from a filter
        await stack.client.get("/health/live"),  # the service's own
        await stack.client.get("/nowhere"),  # no route
    ]
    for response in answers:
        for name, value in SECURITY.items():
            assert response.headers.get(name) == value, (response.url, name)
        assert "Strict-Transport-Security" not in response.headers  # plain HTTP here


async def test_hsts_only_when_the_client_came_over_tls(stack_factory):
    stack = await stack_factory(trust=TrustSettings(proxy_cidrs=["127.0.0.0/8"]))
    over_tls = await stack.client.get("/api/v1/events", headers={"X-Forwarded-Proto": "https"})
    assert over_tls.headers["Strict-Transport-Security"].startswith("max-age=31536000")
    direct = await stack_factory()
    spoofed = await direct.client.get("/api/v1/events", headers={"X-Forwarded-Proto": "https"})
    assert "Strict-Transport-Security" not in spoofed.headers


# ---- settings ---------------------------------------------------------------------------------


def test_trust_settings_from_the_environment(monkeypatch):
    monkeypatch.setenv("URR_TRUST__PROXY_CIDRS", "10.0.0.0/16, 2600:9000::/28")
    monkeypatch.setenv("URR_TRUST__ORIGIN_SECRETS", f'["{SECRET_A}", "{SECRET_B}"]')
    monkeypatch.setenv("URR_TRUST__SITE_ORIGINS", "https://Tickets.Example.com:443/")
    monkeypatch.setenv("URR_TOKEN_CACHE__REFUSED_TTL_S", "3")
    settings = load_settings(GatewaySettings)
    assert [str(n) for n in settings.trust.proxy_cidrs] == ["10.0.0.0/16", "2600:9000::/28"]
    assert [s.get_secret_value() for s in settings.trust.origin_secrets] == [SECRET_A, SECRET_B]
    assert settings.trust.site_origins == ["https://tickets.example.com"]
    assert settings.token_cache.refused_ttl_s == 3.0
    assert SECRET_A not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("URR_TRUST__PROXY_CIDRS", "10.0.0.1/8", "host bits must be zero"),
        ("URR_TRUST__PROXY_CIDRS", "everyone", "not a network in CIDR form"),
        ("URR_TRUST__ORIGIN_SECRETS", "short", "at least 16 characters"),
        ("URR_TRUST__ORIGIN_SECRETS", ",".join(["s" * 20] * 3), "at most two origin secrets"),
        ("URR_TRUST__ORIGIN_SECRET_HEADER", "X Bad: header", "letters, digits and '-'"),
        ("URR_TRUST__SITE_ORIGINS", "tickets.example.com", "not an http(s) origin"),
        ("URR_TRUST__SITE_ORIGINS", "https://tickets.example.com/app", "origin only"),
        ("URR_TRUST__SITE_ORIGINS", "[]", "at least one site origin"),
        ("URR_TRUST__HSTS_MAX_AGE_S", "-1", "greater than or equal to 0"),
        ("URR_TRUST__ACCESS_COOKIE_DOMAIN", "https://urr.example.com", "not a cookie domain"),
        ("URR_TOKEN_CACHE__REFUSED_TTL_S", "-1", "greater than or equal to 0"),
        ("URR_TOKEN_CACHE__REFUSED_MAX_ENTRIES", "-5", "greater than or equal to 0"),
    ],
)
def test_bad_trust_settings_stop_the_start_with_a_clear_message(
    monkeypatch, variable, value, message
):
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings(GatewaySettings)
    assert variable in str(error.value)
    assert message in str(error.value)
    if "SECRET" in variable and "HEADER" not in variable:
        assert value not in str(error.value)


def test_canonical_ip_text_is_the_canonical_form_or_none() -> None:
    assert canonical_ip_text("::ffff:10.0.0.1") == "10.0.0.1"
    assert canonical_ip_text(" 2001:DB8:0:0::1 ") == "2001:db8::1"
    assert canonical_ip_text("10.0.0.1, 10.0.0.2") is None
    assert canonical_ip_text("") is None


def test_proxy_trust_client_addresses_are_canonical_text() -> None:
    trust = ProxyTrust([ipaddress.ip_network("10.0.0.0/8")])
    direct = trust.client("::ffff:192.0.2.7", ["203.0.113.9"])
    assert (direct.ip, direct.chain, direct.via_trusted_proxy) == (
        "192.0.2.7",
        ["192.0.2.7"],
        False,
    )
    via = trust.client("10.1.2.3", ["garbage, 2001:DB8::5, 10.9.9.9"])
    assert (via.ip, via.chain, via.via_trusted_proxy) == (
        "2001:db8::5",
        ["2001:db8::5", "10.9.9.9", "10.1.2.3"],
        True,
    )
    assert trust.client(None, []).ip == "unknown"
