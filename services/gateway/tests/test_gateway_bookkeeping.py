"""The per-request bookkeeping caches (issue 17, deliverable 3): each answers exactly what
the long way does, stays bounded, and cannot be made to skip a rule by what a client sends."""

from __future__ import annotations

import random
import string
from types import SimpleNamespace
from typing import Any, cast

import pytest
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from urr_gateway import forwarding
from urr_gateway.context import RequestFacts
from urr_gateway.forwarding import (
    IDENTITY_HEADER_PREFIX,
    NOT_FORWARDED,
    downstream_response_headers,
    strip_hop_by_hop,
    upstream_request_headers,
)
from urr_gateway.ingress import Ingress
from urr_gateway.trust import TrustSettings


def _slow_upstream_request_headers(pairs: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """The rule as it reads: every pair whose lowered name is neither never-forwarded, nor
    listed in ``Connection``, nor ``X-User-*``."""
    listed = {
        token.strip().lower()
        for name, value in pairs
        if name.lower() == "connection"
        for token in value.split(",")
        if token.strip()
    }
    return [
        (name, value)
        for name, value in pairs
        if name.lower() not in NOT_FORWARDED
        and name.lower() not in listed
        and not name.lower().startswith(IDENTITY_HEADER_PREFIX)
    ]


def _proxy(pairs: list[tuple[str, str]]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_forwarded_headers_match_the_rule_first_time_and_from_the_cache() -> None:
    pairs = [
        ("Host", "gw"), ("Accept", "a"), ("X-User-Id", "forged"), ("x-USER-role", "admin"),
        ("Connection", "X-Hop, keep-alive"), ("X-Hop", "1"), ("Cookie", "c=1"),
        ("X-Forwarded-For", "6.6.6.6"), ("X-Urr-Identity", "forged"), ("accept", "b"),
        ("TE", "trailers"), ("Transfer-Encoding", "chunked"), ("X-Request-Id", "mine"),
    ]  # fmt: skip
    for _ in range(3):
        assert list(upstream_request_headers(_proxy(pairs)).items()) == (
            _slow_upstream_request_headers(pairs)
        )


def test_same_names_with_other_values_are_decided_by_name_only() -> None:
    # The cache is keyed by names: a value never changes what is dropped, except that of
    # ``Connection``, which is part of the key.
    first = [("Connection", "X-A"), ("X-A", "1"), ("X-B", "2")]
    second = [("Connection", "X-B"), ("X-A", "1"), ("X-B", "2")]
    assert list(upstream_request_headers(_proxy(first)).items()) == [("X-B", "2")]
    assert list(upstream_request_headers(_proxy(second)).items()) == [("X-A", "1")]


def test_an_identity_header_in_any_case_is_never_forwarded() -> None:
    # One cached entry per spelling: a spelling the cache has not seen is computed, never
    # taken for a cached neighbour's.
    for spelling in ("X-User-Id", "x-user-id", "X-USER-ID", "x-User-iD", "X-User-"):
        pairs = [("Accept", "a"), (spelling, "forged")]
        for _ in range(2):
            assert list(upstream_request_headers(_proxy(pairs)).items()) == [("Accept", "a")]


def test_drop_cache_is_bounded_against_a_client_rotating_header_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(forwarding, "_DROP_NAMES", {})
    monkeypatch.setattr(forwarding, "_DROP_NAMES_MAX_ENTRIES", 16)
    rng = random.Random(17)
    for _ in range(500):
        name = "X-" + "".join(rng.choices(string.ascii_letters, k=12))
        pairs = [(name, "1"), ("X-User-Id", "forged"), ("Host", "h")]
        assert list(upstream_request_headers(_proxy(pairs)).items()) == [(name, "1")]
        assert len(forwarding._DROP_NAMES) <= 16
    # Names too long in total to keep: answered, not kept.
    forwarding._DROP_NAMES.clear()
    long_names = [(f"X-{index}-" + "n" * 200, "1") for index in range(20)]
    assert list(upstream_request_headers(_proxy(long_names)).items()) == long_names
    assert not forwarding._DROP_NAMES


class _Request:
    """What ``Ingress`` reads of a request (``publicrequest.GatewayRequest``'s shape)."""

    def __init__(self, raw_path: str, pairs: list[tuple[str, str]], remote: str = "10.1.2.3"):
        self.raw_path = raw_path
        self.headers = _proxy(pairs)
        self.remote = remote
        self.scheme = "http"
        self.host = "gw.example"
        self._state: dict[object, object] = {}

    def clone(self, *, rel_url: URL) -> _Request:
        self.raw_path = rel_url.raw_path_qs
        return self


def _call(ingress: Ingress, request: _Request) -> tuple[_Request, RequestFacts]:
    routed, facts = ingress(cast(web.Request, request), "rid")
    return cast(_Request, routed), facts


def test_ingress_drops_the_origin_secret_and_the_api_key_except_where_it_is_the_routes() -> None:
    secret = "s" * 20
    ingress = Ingress(TrustSettings(origin_secrets=[secret]))
    pairs = [("X-Origin-Verify", secret), ("X-API-Key", "k"), ("Accept", "a")]
    for _ in range(2):  # the second time from the caches
        _, facts = _call(ingress, _Request("/api/v1/events/e1?x=1", pairs))
        assert list(facts.headers.items()) == [
            ("Accept", "a"), ("X-Forwarded-For", "10.1.2.3"), ("X-Forwarded-Proto", "http"),
            ("X-Forwarded-Host", "gw.example"), ("X-Request-Id", "rid"),
        ]  # fmt: skip
        assert facts.raw_query == "x=1"
        _, facts = _call(ingress, _Request("/api/v1/ratelimit/usage", pairs))
        assert facts.headers["X-API-Key"] == "k"
        assert "X-Origin-Verify" not in facts.headers


def test_ingress_trusts_forwarded_proto_and_host_only_from_a_trusted_proxy() -> None:
    ingress = Ingress(TrustSettings(proxy_cidrs=["10.0.0.0/8"]))
    pairs = [
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "tickets.example"),
    ]
    _, facts = _call(ingress, _Request("/api/v1/events", pairs, remote="10.0.0.5"))
    assert facts.client_ip == "1.2.3.4"
    assert facts.headers["X-Forwarded-For"] == "1.2.3.4, 10.0.0.5"
    assert facts.headers["X-Forwarded-Proto"] == "https"
    assert facts.headers["X-Forwarded-Host"] == "tickets.example"
    _, facts = _call(ingress, _Request("/api/v1/events", pairs, remote="192.0.2.7"))
    assert facts.client_ip == "192.0.2.7"
    assert facts.headers.getall("X-Forwarded-For") == ["192.0.2.7"]
    assert facts.headers["X-Forwarded-Proto"] == "http"
    assert facts.headers["X-Forwarded-Host"] == "gw.example"


def test_ingress_route_cache_is_bounded_and_keeps_no_refusal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from urr_common.problems import BadRequest
    from urr_gateway import ingress as ingress_module

    monkeypatch.setattr(ingress_module, "_ROUTED_MAX_ENTRIES", 4)
    ingress = Ingress(TrustSettings())
    for index in range(20):
        _, facts = _call(ingress, _Request(f"/api/v1/seats/e{index}/map", []))
        assert facts.route is not None
        assert facts.route.event_id == f"e{index}"
        assert len(ingress._routed) <= 4
    for _ in range(2):
        with pytest.raises(BadRequest):
            _call(ingress, _Request("/api/v1/../admin", []))
    assert "/api/v1/../admin" not in ingress._routed
    request, facts = _call(ingress, _Request("//api//v1/events/%65", []))
    assert facts.normalised.raw == "/api/v1/events/e"
    assert request.raw_path == "/api/v1/events/e"


def test_answer_headers_lose_hop_by_hop_names_only_first_time_and_from_the_cache() -> None:
    pairs = [
        ("Server", "nginx"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
        ("X-User-Id", "u"), ("Keep-Alive", "timeout=5"), ("Set-Cookie", "a=1"),
        ("set-cookie", "b=2"), ("Transfer-Encoding", "chunked"), ("Content-Length", "2"),
    ]  # fmt: skip
    kept = [
        ("Server", "nginx"), ("X-User-Id", "u"), ("Set-Cookie", "a=1"), ("set-cookie", "b=2"),
        ("Content-Length", "2"),
    ]  # fmt: skip
    for _ in range(3):
        assert list(downstream_response_headers(CIMultiDict(pairs)).items()) == kept
        assert list(strip_hop_by_hop(CIMultiDict(pairs)).items()) == kept


def test_an_answer_naming_every_gateway_owned_header_does_not_spare_a_requests_identity() -> None:
    # The answer's dropped set then equals the request rule's; the cache entry of one must
    # never serve the other (the request rule drops X-User-*, the answer's does not).
    names = [("Connection", ", ".join(sorted(NOT_FORWARDED))), ("X-User-Id", "u")]
    assert list(strip_hop_by_hop(CIMultiDict(names)).items()) == [("X-User-Id", "u")]
    request = [("X-User-Id", "forged")]
    assert not list(upstream_request_headers(_proxy(request)).items())
    assert list(strip_hop_by_hop(CIMultiDict(request)).items()) == request


async def test_upstream_header_names_keep_their_case_and_bytes_and_the_name_cache_is_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    from urr_gateway.upstream import connection as connection_module
    from urr_gateway.upstream.connection import UpstreamConnection

    monkeypatch.setattr(connection_module, "_NAMES", {})
    monkeypatch.setattr(connection_module, "_NAMES_MAX_ENTRIES", 8)
    from urr_gateway.upstream.pool import ConnectionPool

    # A real pool (compiled, its type is checked): it never connects, the answers are fed in.
    pool = ConnectionPool(
        "127.0.0.1", 9, limit=1, connect_timeout_s=1, pool_timeout_s=1, idle_timeout_s=1
    )
    transport = SimpleNamespace(write=lambda _: None, close=lambda: None)
    upstream = UpstreamConnection(pool, asyncio.get_running_loop())
    upstream.connection_made(cast(asyncio.Transport, transport))
    for index in range(40):
        response = upstream.start(
            b"GET / HTTP/1.1\r\n\r\n", head_request=False, timeout_s=5, on_done=lambda *_: None
        )
        upstream.data_received(
            b"HTTP/1.1 200 OK\r\nX-Mixed-Case: a\r\nx-odd_NAME: \xc3\xa9\xff\r\n"
            + f"X-Rotating-{index}: {index}\r\n".encode()
            + b"Content-Length: 2\r\n\r\nok"
        )
        assert list(response.headers.items()) == [
            ("X-Mixed-Case", "a"), ("x-odd_NAME", "\xe9\udcff"),
            (f"X-Rotating-{index}", str(index)), ("Content-Length", "2"),
        ]  # fmt: skip
        assert response.content_length == 2
        assert response.headers["x-mixed-case"] == "a"
        assert len(connection_module._NAMES) <= 8
        upstream.request_sent()


def test_known_direct_answers_only_for_untrusted_peers_already_seen() -> None:
    from urr_gateway.trust import ProxyTrust

    proxies = ProxyTrust(TrustSettings(proxy_cidrs=["10.0.0.0/8"]).proxy_cidrs)
    assert proxies.known_direct("192.0.2.1") is None
    direct = proxies.client("192.0.2.1", ["6.6.6.6"])
    assert proxies.known_direct("192.0.2.1") is direct
    assert direct.ip == "192.0.2.1"
    via = proxies.client("10.0.0.9", ["1.2.3.4"])
    assert via.ip == "1.2.3.4"
    # A trusted proxy's answer depends on the header: never kept, so always walked again.
    assert proxies.known_direct("10.0.0.9") is None
    assert proxies.known_direct(None) is None


def test_the_entry_token_is_looked_up_once_per_request_and_never_shared() -> None:
    from urr_gateway.revocation import facts_entry_token

    ingress = Ingress(TrustSettings())
    first, first_facts = _call(
        ingress, _Request("/api/v1/seats/e1/map", [("x-queue-entry-token", " t1 ")])
    )
    assert facts_entry_token(cast(web.Request, first), first_facts) == "t1"
    first.headers = _proxy([("x-queue-entry-token", "changed")])
    assert facts_entry_token(cast(web.Request, first), first_facts) == "t1"  # kept
    second, second_facts = _call(ingress, _Request("/api/v1/seats/e1/map", []))
    assert facts_entry_token(cast(web.Request, second), second_facts) is None
    assert second_facts.entry_token == ""  # "none" is remembered too


def test_bind_request_value_adds_to_the_request_fields_or_to_structlog() -> None:
    import structlog

    from urr_common import logs

    logs.start_request_context("r1")
    logs.bind_request_value("user_id", "u1")
    assert logs._REQUEST_FIELDS.get() == {"request_id": "r1", "user_id": "u1"}
    token = logs._REQUEST_FIELDS.set(None)
    try:
        logs.bind_request_value("user_id", "u2")
        assert structlog.contextvars.get_contextvars()["user_id"] == "u2"
    finally:
        logs._REQUEST_FIELDS.reset(token)
        structlog.contextvars.clear_contextvars()


def _token_filters(is_revoked: object = None, clock: object = None) -> tuple[Any, Any, Any]:
    """The JWT and entry-token filters over caches that already hold ``u1``'s tokens."""
    from prometheus_client import CollectorRegistry, Counter

    from urr_gateway.context import Identity
    from urr_gateway.filters.entry_token import EntryClaims, _EntryToken
    from urr_gateway.filters.jwt_auth import _JwtAuth
    from urr_gateway.filters.ratelimit import revocation_verdict
    from urr_gateway.revocation import PrecheckedRevocation, RevocationCheck
    from urr_gateway.tokencache import VerifiedTokenCache
    from urr_gateway.verification import CachedTokenVerifier

    now = [1_000.0]
    tick = clock or (lambda: now[0])
    identities: VerifiedTokenCache[Identity] = VerifiedTokenCache(100, 30.0, clock=tick)  # type: ignore[arg-type]
    identities.put("access-u1", Identity("u1", "u1@example.com", "user", "a1"), expires_at=1_010)
    claims: VerifiedTokenCache[EntryClaims] = VerifiedTokenCache(100, 30.0, clock=tick)  # type: ignore[arg-type]
    claims.put("entry-u1-e1", EntryClaims("u1", "e1", "j1"), expires_at=1_010)
    rejections = Counter("r", "r", ["filter", "reason"], registry=CollectorRegistry())
    none = cast(Any, None)
    jwt = _JwtAuth(CachedTokenVerifier(none, none, none, identities), rejections, is_revoked)  # type: ignore[arg-type]
    entry = _EntryToken(
        CachedTokenVerifier(none, none, none, claims),
        PrecheckedRevocation(cast(RevocationCheck, None), revocation_verdict),
        rejections,
    )
    return jwt, entry, now


def _token_request(path: str, access: str, entry_token: str) -> tuple[Any, RequestFacts]:
    from urr_gateway.publicrequest import GatewayRequest

    pairs = [("Authorization", f"Bearer {access}"), ("x-queue-entry-token", entry_token)]
    request = GatewayRequest("GET", path, _proxy(pairs), "10.1.2.3", "gw", None, None)
    return Ingress(TrustSettings())(cast(web.Request, request), "rid")


def _decision(*, revoked: bool) -> Any:
    from urr_gateway.ratelimit.window import Decision

    return Decision(True, "general", 10, 9, 0, 0, "10;w=1", False, "redis", (), revoked=revoked)


def test_cached_tokens_are_still_checked_for_user_event_revocation_and_expiry() -> None:
    from urr_common.problems import Forbidden

    jwt, entry, now = _token_filters()
    request, facts = _token_request("/api/v1/seats/e1/map", "access-u1", "entry-u1-e1")
    assert jwt.step(request, facts) is None
    assert facts.identity is not None
    assert facts.identity.user_id == "u1"
    # The limiter's round trip found the key not revoked: accepted from the caches alone.
    facts.rate_limit_decision = _decision(revoked=False)
    facts.rate_limit_revoked_key = "{u:u1}:revoked:j1"
    assert entry.step(request, facts) is None
    facts.rate_limit_decision = _decision(revoked=True)
    with pytest.raises(Forbidden) as revoked:
        entry.step(request, facts)
    assert revoked.value.code == "entry_token_invalid"
    # Another event's path with this event's token: refused on a cache hit too.
    request, facts = _token_request("/api/v1/seats/e2/map", "access-u1", "entry-u1-e1")
    jwt.step(request, facts)
    with pytest.raises(Forbidden) as wrong_event:
        entry.step(request, facts)
    assert wrong_event.value.code == "entry_token_wrong_event"
    # Past the token's exp the cache answers nothing: the token must be verified again.
    now[0] = 1_010.0
    request, facts = _token_request("/api/v1/seats/e1/map", "access-u1", "entry-u1-e1")
    pending = jwt.step(request, facts)
    assert pending is not None  # verification needed, not a cached identity
    pending.close()
    assert facts.identity is None


def test_a_cached_access_token_revoked_by_jti_is_refused() -> None:
    jwt, _, _ = _token_filters(is_revoked=lambda jti: jti == "a1")
    request, facts = _token_request("/api/v1/seats/e1/map", "access-u1", "entry-u1-e1")
    assert jwt.step(request, facts) is None
    assert facts.identity is None
    assert facts.auth_refusal is not None
    assert "Authorization" not in facts.headers


_HEADER_NAMES = (
    "Accept", "Cookie", "X-User-Id", "X-User-Role", "Connection", "X-Hop", "Te", "Upgrade",
    "X-Forwarded-For", "X-Forwarded-Host", "X-Urr-Identity", "X-Request-Id", "Keep-Alive",
    "Transfer-Encoding", "Proxy-Authorization", "X-Other",
)  # fmt: skip


@given(
    st.lists(
        st.tuples(
            st.sampled_from(_HEADER_NAMES).flatmap(
                lambda name: st.sampled_from((name, name.lower(), name.upper()))
            ),
            st.sampled_from(("1", "x-hop", "X-Other, te", "keep-alive")),
        ),
        max_size=12,
    )
)
def test_any_mix_of_names_and_spellings_follows_the_rule(pairs: list[tuple[str, str]]) -> None:
    # A name sent twice in two spellings once made the second removal raise KeyError (500).
    for _ in range(2):  # computed, then from the cache
        assert list(upstream_request_headers(_proxy(pairs)).items()) == (
            _slow_upstream_request_headers(pairs)
        )
