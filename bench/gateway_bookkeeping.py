"""What each piece of per-request bookkeeping costs the gateway, one by one, in µs per call.

The py-spy profile of ``bench/gateway_proxy.py`` says where a request's time goes as a
whole; this isolates the bookkeeping it names (request id, log context, metrics, route
matching, token caches, header rules, the upstream request head) and times each the way the
hot path calls it, beside the cheapest way to do the same job, in one run. Usage::

    uv run python bench/gateway_bookkeeping.py [--repeat 7] [--number 20000]

Each row: median of ``--repeat`` timings of ``--number`` calls (µs per call).
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

from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client import CollectorRegistry

from urr_common.logs import bind_request_context, clear_request_context
from urr_common.metrics import HttpMetrics
from urr_common.service import _REQUEST_ID_RE
from urr_common.tokens import KeySet, SigningKey, TokenSigner, TokenVerifier
from urr_gateway.forwarding import client_address, upstream_request_headers
from urr_gateway.paths import normalise_path
from urr_gateway.routing import match_route
from urr_gateway.tokencache import VerifiedTokenCache
from urr_gateway.upstream import request_head

PATH = "/api/v1/seats/bench-event/map"


def timed(call: Callable[[], object], repeat: int, number: int) -> float:
    return 1e6 * statistics.median(timeit.repeat(call, repeat=repeat, number=number)) / number


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--number", type=int, default=20_000)
    options = parser.parse_args()
    repeat, number = options.repeat, options.number

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


if __name__ == "__main__":
    main()
