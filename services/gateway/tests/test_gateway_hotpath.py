"""The hot path's caches and shortcuts answer exactly what the long way does, stay bounded,
and keep the in-flight bound they replace."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from urr_common.metrics import adder, loop_adder, loop_observer, observer
from urr_gateway import paths, revocation, trust
from urr_gateway.forwarding import downstream_response_headers, upstream_request_headers
from urr_gateway.paths import InvalidPath, normalise_path
from urr_gateway.ratelimit.headers import rate_limit_headers, render_policy, render_state
from urr_gateway.ratelimit.slots import InFlightSlots
from urr_gateway.ratelimit.store import parse_reply
from urr_gateway.ratelimit.window import WindowOutcome, WindowSpec, decide
from urr_gateway.upstream.client import InvalidHeader, request_head


def test_cached_plain_path_is_the_same_answer_and_refusals_are_never_kept() -> None:
    first = normalise_path("/api/v1/seats/e1/map")
    assert normalise_path("/api/v1/seats/e1/map") is first
    assert first.segments == ("api", "v1", "seats", "e1", "map")
    with pytest.raises(InvalidPath):
        normalise_path("/api/../admin")
    with pytest.raises(InvalidPath):
        normalise_path("/api/../admin")  # refused again: a refusal is not cached
    assert "/api/../admin" not in paths._PLAIN


def test_path_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(paths, "_PLAIN", {})
    monkeypatch.setattr(paths, "_PLAIN_CACHE_MAX_ENTRIES", 3)
    for index in range(10):
        normalise_path(f"/p/{index}")
    assert list(paths._PLAIN) == ["/p/7", "/p/8", "/p/9"]
    normalise_path("/" + "a" * 300)  # too long to keep
    assert len(paths._PLAIN) == 3


def test_direct_peer_answer_is_kept_per_peer_and_trusted_proxies_still_walk_the_chain() -> None:
    direct = trust.ProxyTrust([])
    first = direct.client("10.0.0.9", ["1.2.3.4"])
    assert direct.client("10.0.0.9", ["6.6.6.6"]) is first  # the header never counted
    assert (first.ip, first.chain, first.via_trusted_proxy) == ("10.0.0.9", ["10.0.0.9"], False)
    proxied = trust.ProxyTrust(trust.TrustSettings(proxy_cidrs=["10.0.0.0/8"]).proxy_cidrs)
    via = proxied.client("10.0.0.9", ["1.2.3.4"])
    assert (via.ip, via.via_trusted_proxy) == ("1.2.3.4", True)
    again = proxied.client("10.0.0.9", ["5.6.7.8"])
    assert again.ip == "5.6.7.8"  # a trusted peer's answer depends on the header: not kept


def test_jti_cache_answers_as_the_decoder_and_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(revocation, "_JTIS", {})
    monkeypatch.setattr(revocation, "_JTIS_MAX_ENTRIES", 2)
    tokens = [_token({"jti": f"j{index}"}) for index in range(4)] + ["not.a-token"]
    for token in tokens:
        assert revocation._cached_jti(token) == revocation.unverified_jti(token)
        assert revocation._cached_jti(token) == revocation.unverified_jti(token)
    assert len(revocation._JTIS) == 2


def test_request_head_refuses_line_breaks_anywhere_it_would_split_the_head() -> None:
    good = CIMultiDict({"Accept": "*/*", "Host": "client-sent", "X-Tab": "a\tb"})
    head = request_head("GET", "/a?b=1", "up:80", good, "Content-Length: 0\r\n")
    assert head == (
        b"GET /a?b=1 HTTP/1.1\r\nHost: up:80\r\nAccept: */*\r\nX-Tab: a\tb\r\n"
        b"Content-Length: 0\r\n\r\n"
    )
    for name, value in (("X-A", "a\rb"), ("X-A", "a\nb"), ("X-\r\nA", "b"), ("X", "a\r\nEvil: 1")):
        with pytest.raises(InvalidHeader):
            request_head("GET", "/", "up", CIMultiDict([(name, value)]), "")
    for method, target, host in (
        ("GET", "/a\r\nX: y", "up"),
        ("GET\n", "/", "up"),
        ("GET", "/", "u\rp"),
    ):
        with pytest.raises(InvalidHeader):
            request_head(method, target, host, CIMultiDict(), "")


def test_request_head_writes_its_own_framing_whatever_the_case_of_the_callers() -> None:
    for name in ("content-length", "Transfer-Encoding", "CONNECTION", "hOsT"):
        sent = CIMultiDict([("Accept", "*/*"), (name, "7"), ("X-B", "1")])
        assert request_head("POST", "/", "up", sent, "Content-Length: 2\r\n") == (
            b"POST / HTTP/1.1\r\nHost: up\r\nAccept: */*\r\nX-B: 1\r\nContent-Length: 2\r\n\r\n"
        )
    plain = CIMultiDict([("Accept", "*/*"), ("X-B", "1")])  # nothing to drop: the fast path
    assert request_head("GET", "/", "up", plain, "") == (
        b"GET / HTTP/1.1\r\nHost: up\r\nAccept: */*\r\nX-B: 1\r\n\r\n"
    )


def test_connection_listed_headers_are_dropped_both_ways_with_the_set_cached() -> None:
    answer = CIMultiDict(
        [("Connection", "keep-alive, X-Secret"), ("X-Secret", "1"), ("Keep-Alive", "t=5"),
         ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "2")]
    )  # fmt: skip
    for _ in range(2):  # the second time from the cached set
        kept = downstream_response_headers(answer)
        assert list(kept.items()) == [
            ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"), ("Content-Length", "2")
        ]  # fmt: skip
    request = CIMultiDictProxy(
        CIMultiDict([("Connection", "X-Hop"), ("X-Hop", "1"), ("X-User-Id", "u"), ("Accept", "a")])
    )
    for _ in range(2):
        assert list(upstream_request_headers(request).items()) == [("Accept", "a")]


def test_single_window_fast_paths_match_the_general_ones() -> None:
    reply = [1, 1, 7, 250_000, 0]
    parsed = parse_reply(reply, 1, True)
    assert parsed.outcomes == (WindowOutcome(7, 250_000, 0),)
    assert parsed.revoked is True
    spec = (WindowSpec("booking", 10, 1),)
    cases = (
        (WindowOutcome(7, 250_000, 0), "redis"),
        (WindowOutcome(10, 1, 5), "redis"),
        (WindowOutcome(0, 0, 0), "open"),
    )
    for outcome, source in cases:
        decision = decide("booking", spec, (outcome,), 1, source=source)  # type: ignore[arg-type]
        headers = rate_limit_headers(decision)
        assert headers["RateLimit-Policy"] == render_policy(decision.windows)
        if source == "redis":
            assert headers["RateLimit"] == render_state(decision.windows)
        else:
            assert "RateLimit" not in headers


async def test_in_flight_slots_bound_calls_and_serve_waiters_in_arrival_order() -> None:
    slots = InFlightSlots(2)
    assert slots.take_now()
    assert slots.take_now()
    assert not slots.take_now()
    served: list[int] = []

    async def waiter(number: int) -> None:
        await slots.take()
        served.append(number)

    tasks = [asyncio.create_task(waiter(number)) for number in range(3)]
    await asyncio.sleep(0)
    tasks[1].cancel()  # a cancelled waiter gives up its place, not a slot
    await asyncio.sleep(0)
    slots.give_back()
    slots.give_back()
    await asyncio.gather(tasks[0], tasks[2])
    assert served == [0, 2]
    assert slots.free == 0
    slots.give_back()
    slots.give_back()
    assert slots.free == 2
    with pytest.raises(ValueError, match="at least one"):
        InFlightSlots(0)


async def test_a_slot_handed_to_a_waiter_cancelled_meanwhile_is_passed_on() -> None:
    slots = InFlightSlots(1)
    assert slots.take_now()
    first = asyncio.create_task(slots.take())
    second = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give_back()  # handed to the first waiter...
    first.cancel()  # ...which is cancelled before it runs: the slot goes to the second
    await second
    assert first.cancelled()
    assert slots.free == 0


@pytest.mark.parametrize(
    ("make_adder", "make_observer"), [(adder, observer), (loop_adder, loop_observer)]
)
def test_metric_shortcuts_export_what_the_public_methods_export(
    make_adder: Callable[[Any], Callable[[float], None]],
    make_observer: Callable[[Any], Callable[[float], None]],
) -> None:
    fast_registry, slow_registry = CollectorRegistry(), CollectorRegistry()
    fast = _metrics(fast_registry)
    slow = _metrics(slow_registry)
    add_fast, add_gauge = make_adder(fast[0].labels("a")), make_adder(fast[2])
    observe_fast = make_observer(fast[1].labels("a"))
    for amount in (0.0, 0.001, 0.0011, 0.5, 1.0, 7.0):
        observe_fast(amount)
        slow[1].labels("a").observe(amount)
        add_fast(1)
        slow[0].labels("a").inc()
        fast[0].labels("a").inc()  # the public method on the same child still counts
        slow[0].labels("a").inc()
    for amount in (1, 1, -1):
        add_gauge(amount)
        slow[2].inc(amount)
    fast[2].set(5)
    slow[2].set(5)
    assert _samples(fast_registry) == _samples(slow_registry)
    # Only the children handed out lose their lock; the others keep prometheus_client's own.
    assert type(fast[0].labels("b")._value).__name__ == "MutexValue"


def _metrics(registry: CollectorRegistry) -> tuple[Counter, Histogram, Gauge]:
    return (
        Counter("c", "c", ["l"], registry=registry),
        Histogram("h", "h", ["l"], buckets=(0.001, 0.01, 1.0), registry=registry),
        Gauge("g", "g", registry=registry),
    )


def _samples(registry: CollectorRegistry) -> list[str]:
    return [
        line for line in generate_latest(registry).decode().splitlines() if "_created" not in line
    ]


def _token(payload: dict[str, str]) -> str:
    import base64
    import json

    body = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"eyJhbGciOiJFUzI1NiJ9.{body}.c2ln"
