"""What the signed identity assertion (``X-Urr-Identity``) costs per request, in µs.

Two parts, one run:

1. The added work alone, call by call, the way the hot path calls it: the gateway signing an
   assertion (a fresh one, and one reused within ``reuse_s`` for a repeated request), and an
   upstream verifying it (first sight, and a repeat answered from its verified cache).
2. Whole requests through the real gateway (every filter) to an echo upstream, a logged-in
   user polling one path, with the assertion off (the proxy's signer removed), signed fresh
   for every request (``reuse_s`` 0) and reused (``reuse_s`` 1, the default).

Usage::

    uv run python bench/gateway_assertion.py [--calls 5000] [--requests 3000]

Each row: median and p99 of single-call timings in µs. Needs the local Redis (rate limiter).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from urr_common.identity import AssertionSigner, AssertionVerifier
from urr_common.settings import load_settings
from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_gateway.app import create_app
from urr_gateway.proxy import UpstreamProxy
from urr_gateway.settings import GatewaySettings

PATH = "/api/v1/queue/bench-event/status"


def percentiles(samples_ns: list[int]) -> tuple[float, float]:
    ordered = sorted(samples_ns)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) / 1000, p99 / 1000


def row(name: str, samples_ns: list[int]) -> None:
    median, p99 = percentiles(samples_ns)
    print(f"  {name:<52} median {median:8.1f} µs   p99 {p99:8.1f} µs")


def each(call: Callable[[int], object], count: int) -> list[int]:
    samples = []
    for index in range(count):
        started = time.perf_counter_ns()
        call(index)
        samples.append(time.perf_counter_ns() - started)
    return samples


def calls(count: int) -> None:
    key = SigningKey.generate("gw-bench")
    fresh = AssertionSigner(key, reuse_s=0.0)
    reused = AssertionSigner(key, reuse_s=1.0)
    print("the added work alone, per call:")
    row(
        "gateway: sign a fresh assertion",
        each(
            lambda i: fresh.assertion(f"u{i}", "user", audience="queue", method="GET", path=PATH),
            count,
        ),
    )
    reused.assertion("u", "user", audience="queue", method="GET", path=PATH)
    row(
        "gateway: reuse one (same user and path within 1 s)",
        each(
            lambda _: reused.assertion("u", "user", audience="queue", method="GET", path=PATH),
            count,
        ),
    )
    tokens = [
        fresh.assertion(f"v{i}", "user", audience="queue", method="GET", path=PATH)
        for i in range(count)
    ]
    verifier = AssertionVerifier(KeySet([key.verification_key()]), audience="queue")
    row(
        "upstream: verify a new assertion",
        each(lambda i: verifier.verify(tokens[i], method="GET", path=PATH), count),
    )
    row(
        "upstream: verify a repeated one (verified cache)",
        each(lambda i: verifier.verify(tokens[i], method="GET", path=PATH), count),
    )


async def echo(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def requests(count: int, folder: Path) -> None:
    access = SigningKey.generate("access-bench")
    access_signer = TokenSigner(access, "urr-auth", "urr", 3600)
    upstream_app = web.Application()
    upstream_app.router.add_route("*", "/{tail:.*}", echo)
    upstream = TestServer(upstream_app, host="127.0.0.1")
    await upstream.start_server()
    access_pem = folder / "access" / "access-bench.pem"
    access_pem.parent.mkdir(parents=True, exist_ok=True)
    access_pem.write_bytes(access.verification_key().to_pem())
    url = str(upstream.make_url("")).rstrip("/")
    token = access_signer.sign("bench-user", {"email": "b@example.test", "role": "user"})
    headers = {"Authorization": f"Bearer {token}"}
    print(f"\nwhole requests through the gateway ({count} sequential GET {PATH}):")
    try:
        for name, reuse_s, signing in (
            ("no assertion (signer removed)", 1.0, False),
            ("assertion signed for every request (reuse_s 0)", 0.0, True),
            ("assertion reused within 1 s (default)", 1.0, True),
        ):
            settings = load_settings(
                GatewaySettings,
                upstreams={"queue": url},
                access_trust={"jwks_url": None, "public_key_files": [str(access_pem)]},
                identity={"private_key_file": str(folder / "gw.pem"), "reuse_s": reuse_s},
                rate_limit={"budget_ms": 1000},
            )
            app = create_app(settings)
            if not signing:
                for route in app.router.routes():
                    owner = getattr(route.handler, "__self__", None)
                    if isinstance(owner, UpstreamProxy):
                        owner._signer = None
            client = TestClient(TestServer(app, host="127.0.0.1"))
            await client.start_server()
            try:
                for _ in range(200):  # warm caches and connections
                    (await client.get(PATH, headers=headers)).release()
                samples = []
                for _ in range(count):
                    started = time.perf_counter_ns()
                    answer = await client.get(PATH, headers=headers)
                    await answer.read()
                    samples.append(time.perf_counter_ns() - started)
                    assert answer.status == 200, answer.status
            finally:
                await client.close()
            row(name, samples)
    finally:
        await upstream.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=3000)
    options = parser.parse_args()
    print(f"load average: {' '.join(f'{value:.2f}' for value in os.getloadavg())}")
    calls(options.calls)
    with tempfile.TemporaryDirectory() as folder:
        asyncio.run(requests(options.requests, Path(folder)))


if __name__ == "__main__":
    main()
