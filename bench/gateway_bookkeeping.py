"""What each piece of per-request bookkeeping costs the gateway, one by one, in µs per call.

The py-spy profile of ``bench/gateway_proxy.py`` says where a request's time goes as a
whole; this isolates the bookkeeping it names (request id, log context, metrics, route
matching, token caches, header rules, the upstream request head) and times each the way the
hot path calls it, beside the cheapest way to do the same job, in one run. Usage::

    uv run python bench/gateway_bookkeeping.py [--repeat 7] [--number 20000]

Each row: median of ``--repeat`` timings of ``--number`` calls (µs per call).

``--callgrind`` counts instructions per call instead, for the steps as the protocol server
calls them (ingress, the answer's headers, the upstream answer's parse, metrics): exact and
independent of the machine's load, so one revision can be set beside another (``PYTHONPATH``
naming a ``git archive`` of its ``services/gateway/src`` and ``libs/common/src``)::

    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file=/tmp/bk.%p \
        python bench/gateway_bookkeeping.py --callgrind [--number 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import timeit
import uuid
from collections.abc import Callable
from functools import partial
from typing import Any

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from urr_common.logs import bind_request_context, clear_request_context
from urr_common.metrics import HttpMetrics
from urr_common.service import _REQUEST_ID_RE
from urr_common.tokens import KeySet, SigningKey, TokenSigner, TokenVerifier
from urr_common.tokens_testing import pyjwt_verify
from urr_gateway.cookieheader import parse_cookie_header
from urr_gateway.forwarding import client_address, upstream_request_headers
from urr_gateway.paths import normalise_path
from urr_gateway.routing import match_route
from urr_gateway.tokencache import VerifiedTokenCache
from urr_gateway.upstream import request_head

PATH = "/api/v1/seats/bench-event/map"


def timed(call: Callable[[], object], repeat: int, number: int) -> float:
    return 1e6 * statistics.median(timeit.repeat(call, repeat=repeat, number=number)) / number


#: A bench row: its label and what it times (``None``: timed apart).
Row = tuple[str, Callable[[], object] | None]


def _aiohttp_cookies(parse: Callable[[str], Any], header: str) -> dict[str, str]:
    """What ``GatewayRequest.cookies`` did before issue 17."""
    return {name: morsel.value for name, morsel in parse(header)}


def issue17_rows(token: str, verifier: TokenVerifier) -> list[Row]:
    """The second verification path issue 17 removed (pyjwt's decode), and the gateway's
    own Cookie parser beside aiohttp's private one it replaced, on a crowd visitor's header
    (three tokens) and a browser's (analytics, a quoted value)."""
    crowd_cookie = f"access_token={token}; urr-vwr-token={token}; urr-entry-token={token}"
    browser_cookie = f'_ga=GA1.1.12.34; theme="dark mode"; lang=en-GB ; access_token={token}'
    try:
        from aiohttp._cookie_helpers import parse_cookie_header as aiohttp_parse
    except ImportError:  # a later aiohttp without the helper: no baseline rows
        aiohttp_parse = None  # type: ignore[assignment]

    rows: list[Row] = [
        (
            "ES256 verify: pyjwt's path (TokenVerifier.verify before issue 17)",
            partial(pyjwt_verify, verifier, token),
        )
    ]
    for name, header in (("crowd", crowd_cookie), ("browser", browser_cookie)):
        if aiohttp_parse is not None:
            rows.append(
                (
                    f"Cookie ({name}): aiohttp private parser + dict (before)",
                    partial(_aiohttp_cookies, aiohttp_parse, header),
                )
            )
        rows.append(
            (
                f"Cookie ({name}): cookieheader.parse_cookie_header",
                partial(parse_cookie_header, header),
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    parser.add_argument("--callgrind", action="store_true")
    options = parser.parse_args()
    repeat, number = options.repeat, options.number
    if options.callgrind:
        count_instructions(min(number, 5_000))
        return

    key = SigningKey.generate("k")
    token = TokenSigner(key, "urr-auth", "urr", 3600).sign(
        "bench-user", {"email": "b@example.com", "role": "user"}
    )
    verifier = TokenVerifier(
        keys=KeySet([key.verification_key()]), issuer="urr-auth", audience="urr"
    )
    cache: VerifiedTokenCache[str] = VerifiedTokenCache(10_000, 30.0)
    cache.put(token, "identity", expires_at=2e9)
    registry = CollectorRegistry()
    metrics = HttpMetrics.register(registry)
    requests_child = metrics.requests.labels("GET", "/{tail:.*}", "2xx")
    latency_child = metrics.latency.labels("GET", "/{tail:.*}")
    headers = CIMultiDictProxy(
        CIMultiDict(
            {
                "Host": "127.0.0.1:3001",
                "Cookie": f"access_token={token}",
                "x-queue-entry-token": token,
                "Authorization": f"Bearer {token}",
            }
        )
    )
    forward = upstream_request_headers(headers)
    segments = normalise_path(PATH).segments
    app = web.Application()

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    app.router.add_route("*", "/{tail:.*}", handler)
    loop = asyncio.new_event_loop()
    request = make_mocked_request("GET", PATH, headers=headers, app=app, loop=loop)

    async def resolve_many(count: int) -> float:
        started = time.perf_counter()
        for _ in range(count):
            await app.router.resolve(request)
        return time.perf_counter() - started

    router_resolve = (
        1e6
        * statistics.median(loop.run_until_complete(resolve_many(number)) for _ in range(repeat))
        / number
    )

    def log_context() -> None:
        clear_request_context()
        bind_request_context(request_id="r")

    def metrics_as_today() -> None:
        metrics.in_flight.inc()
        metrics.in_flight.dec()
        metrics.requests.labels("GET", "/{tail:.*}", "2xx").inc()
        metrics.latency.labels("GET", "/{tail:.*}").observe(0.001)

    def metrics_cached_children() -> None:
        requests_child.inc()
        latency_child.observe(0.001)

    def metrics_now() -> None:
        metrics.in_flight.inc()
        metrics.in_flight.dec()
        metrics.observe("GET", "/{tail:.*}", 200, 0.001)

    cookie_rows = issue17_rows(token, verifier)
    rows = [
        ("request id: inbound id checked (regex)", lambda: _REQUEST_ID_RE.match("req-1234")),
        ("request id: uuid4().hex", lambda: uuid.uuid4().hex),
        ("request id: os.urandom(16).hex()", lambda: os.urandom(16).hex()),
        ("log context: clear + bind request_id", log_context),
        ("metrics: in-flight +-, counter, histogram (labels each call)", metrics_as_today),
        ("metrics: counter + histogram on cached children", metrics_cached_children),
        ("metrics: in-flight +-, HttpMetrics.observe (cached children)", metrics_now),
        ("route: aiohttp router resolve (catch-all)", None),
        ("route: normalise_path", lambda: normalise_path(PATH)),
        ("route: match_route", lambda: match_route(segments)),
        ("client address (cached parse)", lambda: client_address("127.0.0.1", headers, 0)),
        ("header rules: upstream_request_headers", lambda: upstream_request_headers(headers)),
        (
            "upstream request head (lean client)",
            lambda: request_head("GET", PATH, "127.0.0.1:80", forward, ""),
        ),
        ("verified-token cache hit (sha256 + dict)", lambda: cache.get(token)),
        ("ES256 verify (what the cache saves)", lambda: verifier.verify(token)),
        *cookie_rows,
    ]
    print(f"median of {repeat} x {number} calls, µs per call (one process, this machine now)")
    for label, call in rows:
        if call is None:
            cost = router_resolve
        elif label.startswith("ES256"):
            cost = timed(call, repeat, max(number // 100, 50))
        else:
            cost = timed(call, repeat, number)
        print(f"  {cost:8.2f}  {label}")
    loop.close()


UP_ANSWER = (
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Mon, 07 Dec 2026 01:00:00 GMT\r\n"
    b"Content-Type: application/json\r\nContent-Length: 11\r\nConnection: keep-alive\r\n\r\n"
    b'{"ok":true}'
)
#: What a browser sends besides its credentials (Chrome on a seat-map fetch).
BROWSER_HEADERS = [
    ("Host", "tickets.example.com"),
    ("Connection", "keep-alive"),
    ("sec-ch-ua", '"Chromium";v="131", "Not_A Brand";v="24"'),
    ("sec-ch-ua-mobile", "?0"),
    ("User-Agent", "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 Chrome/131.0 Safari"),
    ("Accept", "application/json"),
    ("sec-ch-ua-platform", '"Linux"'),
    ("Sec-Fetch-Site", "same-origin"),
    ("Sec-Fetch-Mode", "cors"),
    ("Sec-Fetch-Dest", "empty"),
    ("Referer", "https://tickets.example.com/events/bench-event"),
    ("Accept-Encoding", "gzip, deflate, br, zstd"),
    ("Accept-Language", "en-GB,en;q=0.9"),
]


class _Deadlines:
    def watch(self, response: object, timeout_s: float) -> None:
        pass

    def forget(self, response: object) -> None:
        pass


class _Pool:
    def read_deadlines(self, loop: object) -> _Deadlines:
        return _Deadlines()


class _Transport:
    def write(self, data: bytes) -> None:
        pass


class _Prepared:
    def __init__(self, pairs: list[tuple[str, str]]) -> None:
        self.headers = CIMultiDict(pairs)


ANSWER_PAIRS = [("Server", "nginx/1.22.1"), ("Date", "Mon, 07 Dec 2026 01:00:00 GMT"),
                ("Content-Type", "application/json"), ("Content-Length", "11"),
                ("Connection", "keep-alive")]  # fmt: skip


def _EMPTY() -> None:
    pass


def _token_steps(ingress: Any, headers: Any, decision: Any) -> Callable[[], object]:
    """Ingress then the token work of a request whose tokens were verified before: cookie to
    Bearer, the JWT step, the revocation key the limiter asks for, the entry-token step
    (the limiter's round trip found the key not revoked)."""
    import base64
    import dataclasses
    import json
    from typing import cast

    from prometheus_client import Counter

    from urr_gateway.context import Identity
    from urr_gateway.filters.cookie_auth import cookie_auth_step
    from urr_gateway.filters.entry_token import EntryClaims, _EntryToken
    from urr_gateway.filters.jwt_auth import _JwtAuth
    from urr_gateway.filters.ratelimit import revocation_verdict
    from urr_gateway.publicrequest import GatewayRequest
    from urr_gateway.revocation import PrecheckedRevocation, RevocationCheck, revocation_key_of
    from urr_gateway.tokencache import TokenDigests
    from urr_gateway.verification import CachedTokenVerifier

    payload = base64.urlsafe_b64encode(json.dumps({"jti": "j1", "sub": "u1"}).encode())
    entry = "eyJhbGciOiJFUzI1NiJ9." + payload.decode().rstrip("=") + "." + "s" * 86
    access = "eyJhbGciOiJFUzI1NiJ9." + "p" * 300 + "." + "s" * 86
    pairs = [("Host", "127.0.0.1:8080"), ("Cookie", f"access_token={access}"),
             ("x-queue-entry-token", entry)]  # fmt: skip
    del headers
    identities: VerifiedTokenCache[Identity] = VerifiedTokenCache(10_000, 3600.0)
    identities.put(access, Identity("u1", "u1@example.com", "user", "a1"), expires_at=2e9)
    claims: VerifiedTokenCache[EntryClaims] = VerifiedTokenCache(10_000, 3600.0)
    claims.put(entry, EntryClaims("u1", "bench-event", "j1"), expires_at=2e9)
    rejections = Counter("r", "r", ["filter", "reason"], registry=CollectorRegistry())
    jwt = _JwtAuth(
        CachedTokenVerifier(cast(Any, None), cast(Any, None), cast(Any, None), identities),
        rejections,
        None,
    )
    entry_step = _EntryToken(
        CachedTokenVerifier(cast(Any, None), cast(Any, None), cast(Any, None), claims),
        PrecheckedRevocation(cast(RevocationCheck, None), revocation_verdict),
        rejections,
    )
    decided = dataclasses.replace(decision, revoked=False)
    digests = TokenDigests()

    def steps() -> None:
        request = GatewayRequest(
            "GET", PATH, CIMultiDictProxy(CIMultiDict(pairs)), "127.0.0.1", "h", None, None
        )
        routed, facts = ingress(request, "req-1")
        facts.token_digests = digests
        cookie_auth_step(routed, facts)
        assert jwt.step(routed, facts) is None
        key = revocation_key_of(routed)
        facts.rate_limit_decision = decided
        facts.rate_limit_revoked_key = key
        assert entry_step.step(routed, facts) is None

    return steps


class _ClientTransport:
    """A client connection's transport that takes every write and never closes."""

    def write(self, data: bytes) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default


class _WholeAnswer:
    """An upstream answer read whole (what ``_relayed_whole`` reads of ``UpstreamResponse``),
    its headers a fresh copy of the parsed ones on every call (they are edited in place)."""

    complete = True
    status = 200
    reason = "OK"
    content_length = 11

    def __init__(self, headers: CIMultiDict[str]) -> None:
        self.headers = headers

    def take_body(self) -> bytes:
        return b'{"ok":true}'


def _listener_rows(
    loop: asyncio.AbstractEventLoop, app: web.Application, routed: Any, facts: Any, head: bytes
) -> list[tuple[str, Callable[[], object]]]:
    """The public listener's own work: a request head read into its ``GatewayRequest`` and
    exchange (llhttp and the header callbacks), and a small upstream answer written whole
    (hop-by-hop stripped, RateLimit and security headers, the head rendered and written)."""
    from types import SimpleNamespace

    from urr_gateway import publicserver
    from urr_gateway.prepare import sync_receivers

    server: Any = SimpleNamespace(
        loop=loop, request_timeout_s=10.0, keepalive_timeout_s=75.0, hostname="h",
        connections=set(),
    )  # fmt: skip
    connection: Any = publicserver._PublicConnection(server)
    connection.connection_made(_ClientTransport())
    connection._worker = True  # no task: the exchange is only queued (``_wake_worker``)
    request = (
        b"GET %s HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nCookie: access_token=%s\r\n"
        b"x-queue-entry-token: %s\r\n\r\n" % (PATH.encode(), b"a" * 400, b"a" * 400)
    )

    def head_read() -> None:
        connection.data_received(request)
        connection._queue.clear()
        connection._answers.clear()

    listener: Any = publicserver.PublicServer.__new__(publicserver.PublicServer)
    listener._prepare_sync = sync_receivers(app)
    listener._status_lines = {}
    listener.date_text = "Mon, 07 Dec 2026 01:00:00 GMT"
    exchange: Any = publicserver._Exchange(connection, routed, None, None)  # type: ignore[arg-type]
    exchange.facts = facts
    exchange.request_id = "0123456789abcdef0123456789abcdef"
    parsed = CIMultiDict(head_pairs(head))

    def answer_written() -> None:
        exchange.head_sent = exchange.close = False
        assert listener._relayed_whole(exchange, _WholeAnswer(parsed.copy()))

    return [
        ("public listener: a request head read (3 headers)", head_read),
        ("public listener: a small upstream answer written whole", answer_written),
    ]


def head_pairs(head: bytes) -> list[tuple[str, str]]:
    """The header fields of an upstream answer as the upstream client parses them."""
    from urr_gateway.upstream.connection import UpstreamConnection

    upstream = UpstreamConnection(_Pool(), asyncio.new_event_loop())  # type: ignore[arg-type]
    upstream.connection_made(_Transport())  # type: ignore[arg-type]
    response = upstream.start(b"", head_request=False, timeout_s=5.0, on_done=lambda *_: None)
    upstream.data_received(head)
    return list(response.headers.items())


def _counted_rows(loop: asyncio.AbstractEventLoop) -> list[tuple[str, Callable[[], object]]]:
    """The steps as the protocol server calls them, each a call without arguments."""
    from urr_gateway.forwarding import strip_hop_by_hop
    from urr_gateway.ingress import Ingress
    from urr_gateway.prepare import sync_receivers
    from urr_gateway.publicrequest import GatewayRequest
    from urr_gateway.ratelimit.headers import rate_limit_headers
    from urr_gateway.ratelimit.window import WindowOutcome, WindowSpec, decide
    from urr_gateway.responseheaders import install_response_headers
    from urr_gateway.trust import TrustSettings
    from urr_gateway.upstream.connection import UpstreamConnection

    token = "a" * 400  # only its text matters to these steps
    bench_pairs = [("Host", "127.0.0.1:8080"), ("Cookie", f"access_token={token}"),
                   ("x-queue-entry-token", token)]  # fmt: skip
    browser_pairs = [*BROWSER_HEADERS, ("Cookie", f"access_token={token}"),
                     ("x-queue-entry-token", token)]  # fmt: skip
    ingress = Ingress(TrustSettings())

    def request_of(pairs: list[tuple[str, str]]) -> Any:
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        return GatewayRequest("GET", PATH, headers, "127.0.0.1", "127.0.0.1:8080", None, None)

    def ingress_of(pairs: list[tuple[str, str]]) -> Callable[[], object]:
        return lambda: ingress(request_of(pairs), "req-1")

    upstream = UpstreamConnection(_Pool(), loop)  # type: ignore[arg-type]
    upstream.connection_made(_Transport())  # type: ignore[arg-type]

    def on_done(*_: object) -> None:
        pass

    def upstream_answer() -> None:
        response = upstream.start(b"", head_request=False, timeout_s=5.0, on_done=on_done)
        upstream.data_received(UP_ANSWER)
        upstream.request_sent()
        strip_hop_by_hop(response.headers)

    decision = decide(
        "booking", (WindowSpec("booking", 100, 60),), (WindowOutcome(7, 25_000, 0),), 1,
        source="redis",
    )  # fmt: skip
    app = web.Application()
    install_response_headers(app, TrustSettings())
    twins = sync_receivers(app)
    assert twins is not None
    apply = twins[0]
    routed, facts = ingress(request_of(bench_pairs), "req-1")
    facts.rate_limit_headers = rate_limit_headers(decision)
    metrics = HttpMetrics.register(CollectorRegistry())
    token_steps = _token_steps(ingress, request_of(bench_pairs).headers, decision)
    return [
        ("nothing (the loop and the toggling, taken off the rows below)", _EMPTY),
        ("ingress, the in-process bench's 3 headers", ingress_of(bench_pairs)),
        ("ingress, a browser's 15 headers", ingress_of(browser_pairs)),
        ("upstream answer parsed, hop-by-hop stripped", upstream_answer),
        ("ingress + cookie, JWT, revocation key, entry token (cached)", token_steps),
        ("rate_limit_headers (one window, counted)", lambda: rate_limit_headers(decision)),
        (
            "answer headers (security, RateLimit merge)",
            lambda: apply(routed, _Prepared(ANSWER_PAIRS)),  # type: ignore[arg-type]
        ),
        ("HttpMetrics.observe", lambda: metrics.observe("GET", "/{tail:.*}", 200, 0.001)),
        *_listener_rows(loop, app, routed, facts, UP_ANSWER),
    ]


def count_instructions(number: int) -> None:
    """Instructions per call of each step, under ``valgrind --tool=callgrind``."""
    import subprocess
    from pathlib import Path

    loop = asyncio.new_event_loop()
    pid = str(os.getpid())

    def control(*args: str) -> None:
        subprocess.run(["callgrind_control", *args, pid], check=True, capture_output=True)  # noqa: S603, S607

    def dumps() -> set[Path]:
        return set(Path("/tmp").glob(f"*.{pid}.*"))  # noqa: S108

    print(f"instructions per call ({number} calls each, callgrind, less the empty call's)")
    empty = 0.0
    for label, call in _counted_rows(loop):
        for _ in range(200):
            call()  # warm: caches filled, as on the hot path
        before = dumps()
        control("-z")
        control("--instr=on")
        for _ in range(number):
            call()
        control("--instr=off")
        control("-d")
        (dump,) = dumps() - before
        annotated = subprocess.run(  # noqa: S603
            ["callgrind_annotate", str(dump)],  # noqa: S607
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        total = next(
            int(line.split()[0].replace(",", ""))
            for line in annotated.splitlines()
            if "PROGRAM TOTALS" in line
        )
        if call is _EMPTY:
            empty = total / number
        print(f"  {total / number - empty:10,.0f}  {label}", flush=True)
    loop.close()


if __name__ == "__main__":
    main()
