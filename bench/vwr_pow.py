"""The proof-of-work gate's costs: the visitor's solve time in Chromium, the server's verify.

    uv run python bench/vwr_pow.py [--bits 16 18 20] [--samples 40 30 20] [--calls 20000]

Part 1, the server: the CPU time of ``proof_of_work.verify`` (shape, HMAC, event, expiry,
two SHA-256) per call in µs, beside one SHA-256 of a 40-byte message (the baseline: the
least a proof-of-work check can cost), the HMAC alone, and an ES256 verification of a
Tier-1 token (what signing the challenges with the existing ES256 key would have cost).
The DynamoDB write that records the use is not in it (one conditional PutItem, like the
place write beside it).

Part 2, the visitor: Debian's Chromium (headless, Playwright) loads the waiting page's
``pow.js`` from a local server and solves fresh challenges of each difficulty with
``urrPow.solveChallenge``, a new Web Worker per solve, exactly as the page does. The time is
from the call to the answer (worker start included). Solve times follow a geometric law
(``2**bits`` tries expected, P95 three times the mean), so the medians need many samples;
every counter is checked in Python.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import hmac
import os
import statistics
import time
from importlib import resources
from typing import Any

from aiohttp import web

from urr_common.tokens import KeySet, SigningKey, TokenSigner, TokenVerifier
from urr_vwr_lambda import proof_of_work

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
PAGE = "<!doctype html><title>pow bench</title><script src='/vwr/assets/v1/pow.js'></script>"


def tails(values: list[float]) -> tuple[float, float]:
    """Median and P95."""
    cuts = statistics.quantiles(values, n=20, method="inclusive")
    return statistics.median(values), cuts[18]


def time_us(call: Any, calls: int) -> tuple[float, float]:
    samples = []
    for _ in range(calls):
        started = time.perf_counter_ns()
        call()
        samples.append((time.perf_counter_ns() - started) / 1000)
    return tails(samples)


def server_costs(calls: int) -> None:
    key = os.urandom(32)
    now = int(time.time())
    issued = proof_of_work.issue(key, event_id="bench-event", bits=16, now_s=now, ttl_s=300)
    solution = {"challenge": issued.text, "counter": proof_of_work.solve(issued.text, 16)}
    message = os.urandom(40)
    signing = SigningKey.generate("bench")
    signer = TokenSigner(signing, issuer="urr-vwr", audience="urr-vwr", ttl_s=600)
    token = signer.sign("rid", {"evt": "bench-event", "pos": 1})
    verifier = TokenVerifier(KeySet([signing.verification_key()]), "urr-vwr", "urr-vwr")
    cases = {
        "baseline: one SHA-256 (40 B)": lambda: hashlib.sha256(message).digest(),
        "HMAC-SHA256 of the challenge": lambda: hmac.new(
            key, issued.text.encode(), hashlib.sha256
        ).digest(),
        "proof_of_work.verify (whole)": lambda: proof_of_work.verify(
            solution, keys=(key,), event_id="bench-event", required_bits=16, now_s=now
        ),
        "ES256 token verify (alternative)": lambda: verifier.verify(token),
    }
    print(f"server, {calls} calls each (µs per call)")
    print(f"  {'case':<36} {'median':>9} {'p95':>9}")
    for name, call in cases.items():
        time_us(call, min(calls, 1000))  # warm up
        median, p95 = time_us(call, calls)
        print(f"  {name:<36} {median:9.2f} {p95:9.2f}")


async def serve_assets() -> tuple[web.AppRunner, str]:
    assets = resources.files("urr_vwr_lambda") / "static" / "assets" / "v1"

    async def page(_: web.Request) -> web.Response:
        return web.Response(text=PAGE, content_type="text/html")

    async def asset(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in ("pow.js", "pow-worker.js"):
            raise web.HTTPNotFound()
        return web.Response(
            body=(assets / name).read_bytes(), content_type="application/javascript"
        )

    app = web.Application()
    app.router.add_get("/bench", page)
    app.router.add_get("/vwr/assets/v1/{name}", asset)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


SOLVE = """async ([challenge, bits]) => {
  const started = performance.now();
  const found = await window.urrPow.solveChallenge(challenge, bits);
  return {ms: performance.now() - started, counter: found.counter, tries: found.tries};
}"""


async def browser_costs(bits_list: list[int], samples: list[int]) -> None:
    from playwright.async_api import async_playwright

    runner, url = await serve_assets()
    try:
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(f"{url}/bench")
                await page.wait_for_function("window.urrPow !== undefined")
                version = browser.version
                print(f"\nChromium {version}: solve time per challenge (new worker each)")
                print(
                    f"  {'bits':>4} {'n':>4} {'median ms':>10} {'p95 ms':>10} "
                    f"{'mean tries':>11} {'Mhash/s':>8}"
                )
                for bits, count in zip(bits_list, samples, strict=True):
                    times, tries = [], []
                    for _ in range(count):
                        issued = proof_of_work.issue(
                            os.urandom(32),
                            event_id="bench-event",
                            bits=bits,
                            now_s=int(time.time()),
                            ttl_s=300,
                        )
                        found = await page.evaluate(SOLVE, [issued.text, bits])
                        digest = proof_of_work.attempt(
                            proof_of_work.seed(issued.text), found["counter"]
                        )
                        if proof_of_work.leading_zero_bits(digest) < bits:
                            raise SystemExit(f"Chromium's counter does not solve {issued.text}")
                        times.append(found["ms"])
                        tries.append(found["tries"])
                    median, p95 = tails(times)
                    rate = sum(tries) / sum(times) / 1000
                    print(
                        f"  {bits:>4} {count:>4} {median:10.1f} {p95:10.1f} "
                        f"{statistics.fmean(tries):11.0f} {rate:8.2f}"
                    )
            finally:
                await browser.close()
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--bits", type=int, nargs="+", default=[16, 18, 20])
    parser.add_argument("--samples", type=int, nargs="+", default=[40, 30, 20])
    parser.add_argument("--calls", type=int, default=20_000)
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores (shared machine)")
    server_costs(args.calls)
    asyncio.run(browser_costs(args.bits, args.samples))


if __name__ == "__main__":
    main()
