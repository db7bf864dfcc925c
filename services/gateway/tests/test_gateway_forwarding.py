"""Header rules: hop-by-hop, gateway-owned headers, client address behind trusted proxies."""

from __future__ import annotations

import pytest
from multidict import CIMultiDict, CIMultiDictProxy

from urr_gateway.forwarding import (
    client_address,
    downstream_response_headers,
    forwarded_host,
    forwarded_proto,
    strip_identity_headers,
    upstream_request_headers,
)


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


def test_request_headers_drop_hop_by_hop_owned_and_identity_headers():
    headers = _headers(
        ("Connection", "keep-alive, X-Private"),
        ("X-Private", "p"),
        ("Keep-Alive", "timeout=5"),
        ("TE", "trailers"),
        ("Trailer", "X-T"),
        ("Transfer-Encoding", "chunked"),
        ("Upgrade", "websocket"),
        ("Proxy-Authorization", "Basic x"),
        ("Proxy-Connection", "keep-alive"),
        ("Host", "client.example"),
        ("Expect", "100-continue"),
        ("Forwarded", "for=1.2.3.4"),
        ("X-Forwarded-For", "1.2.3.4"),
        ("X-Real-IP", "1.2.3.4"),
        ("X-Request-Id", "abc"),
        ("X-User-Id", "admin"),
        ("x-user-role", "admin"),
        ("X-Urr-Identity", "forged"),
        ("X-Userland", "kept: not an identity header"),
        ("Authorization", "Bearer t"),
        ("Cookie", "a=1"),
        ("Accept", "application/json"),
        ("Content-Length", "3"),
    )
    forwarded = upstream_request_headers(headers)
    assert sorted(forwarded.keys()) == sorted(
        ["X-Userland", "Authorization", "Cookie", "Accept", "Content-Length"]
    )


def test_response_headers_drop_hop_by_hop_and_keep_repeated_set_cookie():
    headers = _headers(
        ("Connection", "X-Secret"),
        ("X-Secret", "s"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Authenticate", "Basic"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Location", "/x"),
        ("Content-Encoding", "gzip"),
    )
    kept = downstream_response_headers(headers)
    assert kept.getall("Set-Cookie") == ["a=1", "b=2"]
    assert sorted(set(kept.keys())) == ["Content-Encoding", "Location", "Set-Cookie"]


def test_identity_headers_are_stripped_in_place_whatever_their_case():
    headers = CIMultiDict([("X-User-Id", "1"), ("x-user-id", "2"), ("X-USER-ROLE", "admin")])
    headers.add("Accept", "*/*")
    strip_identity_headers(headers)
    assert list(headers.keys()) == ["Accept"]


@pytest.mark.parametrize(
    ("remote", "xff", "trusted", "client", "chain"),
    [
        ("10.0.0.9", None, 0, "10.0.0.9", ["10.0.0.9"]),
        # Spoofed header, no trusted proxy: ignored.
        ("10.0.0.9", "6.6.6.6", 0, "10.0.0.9", ["10.0.0.9"]),
        # One trusted proxy (10.0.0.9) that appended the client 1.1.1.1.
        ("10.0.0.9", "1.1.1.1", 1, "1.1.1.1", ["1.1.1.1", "10.0.0.9"]),
        # The client prepended a lie; the proxy appended the truth: the lie is dropped.
        ("10.0.0.9", "6.6.6.6, 1.1.1.1", 1, "1.1.1.1", ["1.1.1.1", "10.0.0.9"]),
        # Two trusted proxies.
        (
            "10.0.0.9",
            "6.6.6.6, 1.1.1.1, 10.0.0.8",
            2,
            "1.1.1.1",
            ["1.1.1.1", "10.0.0.8", "10.0.0.9"],
        ),
        # Fewer entries than trusted proxies: the header is not trusted at all.
        ("10.0.0.9", "1.1.1.1", 2, "10.0.0.9", ["10.0.0.9"]),
        # Garbage where an address should be: not trusted.
        ("10.0.0.9", "not-an-ip", 1, "10.0.0.9", ["10.0.0.9"]),
        ("10.0.0.9", "2001:DB8::1", 1, "2001:db8::1", ["2001:db8::1", "10.0.0.9"]),
        (None, None, 0, "unknown", ["unknown"]),
    ],
)
def test_client_address(remote, xff, trusted, client, chain):
    headers = _headers(("X-Forwarded-For", xff)) if xff else _headers()
    assert client_address(remote, headers, trusted) == (client, chain)


def test_forwarded_proto_and_host_are_trusted_only_behind_proxies():
    headers = _headers(("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "shop.example"))
    assert forwarded_proto("http", headers, 0) == "http"
    assert forwarded_proto("http", headers, 1) == "https"
    assert forwarded_proto("http", _headers(("X-Forwarded-Proto", "gopher")), 1) == "http"
    assert forwarded_host("gw:3001", headers, 0) == "gw:3001"
    assert forwarded_host("gw:3001", headers, 1) == "shop.example"
