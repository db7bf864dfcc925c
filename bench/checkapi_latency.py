"""Check API latency under an open-loop load: ``POST /internal/v1/ratelimit/check``.

Run manually (never part of the test run):

    uv run python bench/checkapi_latency.py [--rate 5000] [--seconds 10] [--connections 16]
        [--variants pipeline,per_call,ping,limits-mw] [--uvloop]

Starts a private redis-server and, one variant after the other, the check app
(``create_check_app``) in a separate server process on free loopback ports, then sends
requests at a fixed rate from this process,
whatever the answers' speed (open loop): request k is due at t0 + k / rate and its latency is
measured from that due time, so a stalled server shows up in the figures instead of slowing
the generator down (no coordinated omission). HTTP/1.1 keep-alive over raw asyncio streams,
so the generator's own cost stays small next to aiohttp's client.

Variants (the same app, limiter, deny cache and metrics; only the Redis side differs):

* ``pipeline``   the default limiter: auto-pipelined script calls on a lean connection;
* ``pipeline-window``  the same with ``pipeline_window_us`` = ``--window-us`` (default 250):
                 batches gather that long, fewer writes per decision at moderate rates;
* ``per_call``   ``transport=per_call``: one redis-py script call per decision (before);
* ``ping``       a store that answers "allowed" after one redis-py PING (the baseline);
* ``limits-mw``  a store calling the `limits` library's moving window (redis-py);
* ``tenant``     the default limiter asked in the tenant shape (``{"tenant", "route",
                 "method"}``): a published policy set (the seed defaults, 10,000 tenants with
                 a monthly quota) followed by a ``PolicyWatcher``, the governing policy looked
                 up, and ``tenant_decision.lua`` (windows, quota, usage); compare with
                 ``pipeline``, the policy-less decision.

Keys rotate over 10,000 tenants (category ``general``, 100/min), so answers are mostly
"allowed"; every 10th request goes to one hot key that is over its limit (deny-cache path).
Targets: the operations guide's P95 <= 10 ms and P99 <= 20 ms; ours P99 <= 2 ms at 5,000/s
and <= 100 server CPU µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from urr_devstack.procs import RedisServer, free_port, wait_listening

TENANTS = 10_000
VARIANTS = ("pipeline", "pipeline-window", "per_call", "ping", "limits-mw", "tenant")


class PingStore:
    """A store that asks Redis nothing but PING and always admits: the floor of the app."""

    def __init__(self, redis: Any) -> None:
        self._redis = redis

    async def load(self) -> None:
        await self._redis.ping()

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        return None

    async def evaluate(self, *_: Any, **__: Any) -> Any:
        from urr_gateway.ratelimit.store import ScriptResult
        from urr_gateway.ratelimit.window import WindowOutcome

        await self._redis.ping()
        return ScriptResult((WindowOutcome(0, 0, 0),), None)


class LimitsStore(PingStore):
    """The `limits` library's moving window (redis-py) behind the same store interface."""

    def __init__(self, redis: Any, redis_url: str) -> None:
        from limits import RateLimitItemPerMinute
        from limits.aio.storage import RedisStorage
        from limits.aio.strategies import MovingWindowRateLimiter

        super().__init__(redis)
        self._storage = RedisStorage(
            redis_url.replace("redis://", "async+redis://"), implementation="redispy"
        )
        self._moving = MovingWindowRateLimiter(self._storage)
        self._item = RateLimitItemPerMinute(100)

    async def evaluate(self, subject: str, *_: Any, **__: Any) -> Any:
        from urr_gateway.ratelimit.store import ScriptResult
        from urr_gateway.ratelimit.window import WindowOutcome

        allowed = await self._moving.hit(self._item, subject)
        # limits answers yes/no; a refusal is reported as "retry in a second".
        return ScriptResult((WindowOutcome(0, 0, 0 if allowed else 1_000_000),), None)

    async def aclose(self) -> None:
        await self._storage.bridge.get_connection().aclose()  # type: ignore[attr-defined]


async def serve(port: int, redis_url: str, variant: str, window_us: int) -> None:
    """The server process: the check app alone on ``port``."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from redis.asyncio import Redis

    from urr_gateway.checkapi import create_check_app
    from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter

    redis = Redis.from_url(redis_url, max_connections=64, socket_timeout=0.5)
    registry = CollectorRegistry()
    settings = RateLimitSettings(
        transport="per_call" if variant == "per_call" else "pipeline",
        pipeline_window_us=window_us if variant == "pipeline-window" else 0,
    )
    store: Any = None
    if variant == "ping":
        store = PingStore(redis)
    elif variant == "limits-mw":
        store = LimitsStore(redis, redis_url)
    limiter = SlidingWindowLimiter(redis, settings, registry=registry, store=store)
    await limiter.prepare()
    policies = None
    if variant == "tenant":
        from urr_common.ratelimit_policies import PolicySet, default_policies
        from urr_gateway.ratelimit.policyset import PolicyWatcher
        from urr_ratelimit_admin.publisher import PolicyPublisher

        published = PolicySet(
            version=1,
            policies=tuple(default_policies()),
            quotas={tenant_id(i): 10**9 for i in range(TENANTS)} | {"hot-tenant": 10**9},
        )
        await PolicyPublisher(redis).publish(published)
        policies = PolicyWatcher(redis)
        await policies.start()
    app = create_check_app(limiter, registry=registry, policies=policies)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    degraded = sum(
        registry.get_sample_value(
            "urr_ratelimit_degraded_decisions_total", {"category": c, "policy": p}
        )
        or 0.0
        for c in ("general",)
        for p in ("open", "local")
    )
    stats = await redis.info("stats")
    print(
        f"  server ({variant}): degraded decisions {degraded:.0f}, Redis connections opened "
        f"{stats['total_connections_received']}",
        flush=True,
    )
    await runner.cleanup()
    if policies is not None:
        await policies.stop()
    await limiter.aclose()
    await redis.aclose()


def tenant_id(index: int) -> str:
    return f"tenant-{index % TENANTS}"


def request_bytes(index: int, tenant_shape: bool = False) -> bytes:
    key = "hot-tenant" if index % 10 == 0 else tenant_id(index)
    if tenant_shape:
        body = orjson.dumps({"tenant": key, "route": "/api/v1/events/e1", "method": "GET"})
    else:
        body = orjson.dumps({"key": key, "category": "general", "cost": 1})
    head = (
        "POST /internal/v1/ratelimit/check HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def connection_worker(
    port: int,
    queue: asyncio.Queue[tuple[int, float] | None],
    latencies: list[float],
    errors: list[str],
    tenant_shape: bool,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (item := await queue.get()) is not None:
            index, due = item
            writer.write(request_bytes(index, tenant_shape))
            status = await read_response(reader)
            latencies.append(time.perf_counter() - due)
            if status != 200:
                errors.append(str(status))
    finally:
        writer.close()
        await writer.wait_closed()


async def generate(
    args: argparse.Namespace, port: int, tenant_shape: bool = False
) -> tuple[list[float], list[str], float]:
    queues: list[asyncio.Queue[tuple[int, float] | None]] = [
        asyncio.Queue() for _ in range(args.connections)
    ]
    latencies: list[float] = []
    errors: list[str] = []
    workers = [
        asyncio.create_task(connection_worker(port, q, latencies, errors, tenant_shape))
        for q in queues
    ]
    total = int(args.rate * args.seconds)
    interval = 1.0 / args.rate
    start = time.perf_counter() + 0.05
    sent = 0
    while sent < total:
        now = time.perf_counter()
        # Everything due by now goes out now: the schedule never waits for answers.
        while sent < total and start + sent * interval <= now:
            queues[sent % args.connections].put_nowait((sent, start + sent * interval))
            sent += 1
        await asyncio.sleep(max(0.0, min(interval, start + sent * interval - time.perf_counter())))
    for queue in queues:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    return latencies, errors, time.perf_counter() - start


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    variant: str
    answers: int
    rate: float
    errors: int
    quantiles_ms: list[float]
    server_cpu_us: float
    generator_cpu_us: float
    load: float


async def run_load(args: argparse.Namespace, port: int, server_pid: int, variant: str) -> Result:
    # Warm-up (connections, script, caches), not measured.
    warm = argparse.Namespace(**{**vars(args), "rate": min(args.rate, 500), "seconds": 1})
    tenant_shape = variant == "tenant"
    await generate(warm, port, tenant_shape)
    server_cpu, own_cpu = cpu_seconds(server_pid), time.process_time()
    latencies, errors, elapsed = await generate(args, port, tenant_shape)
    server_cpu = cpu_seconds(server_pid) - server_cpu
    own_cpu = time.process_time() - own_cpu
    ordered = sorted(latencies)
    quantiles = [percentile(ordered, q) * 1000 for q in (0.5, 0.9, 0.95, 0.99, 0.999)]
    return Result(
        variant,
        len(ordered),
        len(ordered) / elapsed,
        len(errors),
        [*quantiles, ordered[-1] * 1000],
        server_cpu / len(ordered) * 1e6,
        own_cpu / len(ordered) * 1e6,
        os.getloadavg()[0],
    )


def report(args: argparse.Namespace, results: list[Result]) -> None:
    print(
        f"open loop {args.rate:.0f}/s for {args.seconds:.0f}s over {args.connections} "
        "connections per variant"
    )
    header = (
        f"{'variant':<15} {'answers/s':>9} {'non-200':>7} {'p50 ms':>7} {'p90 ms':>7} "
        f"{'p95 ms':>7} {'p99 ms':>7} {'p99.9 ms':>8} {'max ms':>7} {'srv CPU µs':>10} "
        f"{'gen CPU µs':>10} {'load':>5}"
    )
    print(header)
    print("-" * len(header))
    for r in results:
        q = r.quantiles_ms
        print(
            f"{r.variant:<15} {r.rate:9.0f} {r.errors:7d} {q[0]:7.2f} {q[1]:7.2f} {q[2]:7.2f} "
            f"{q[3]:7.2f} {q[4]:8.2f} {q[5]:7.2f} {r.server_cpu_us:10.0f} "
            f"{r.generator_cpu_us:10.0f} {r.load:5.1f}"
        )
    # CPU per request does not depend on how busy the rest of the machine is: it says what
    # one core could serve, where the latencies above also say how much CPU we were given.
    by_name = {r.variant: r for r in results}
    if "tenant" in by_name and "pipeline" in by_name:
        tenant, plain = by_name["tenant"].quantiles_ms[0], by_name["pipeline"].quantiles_ms[0]
        print(
            f"tenant shape P50 within 10% of the policy-less pipeline P50: {tenant:.2f} vs "
            f"{plain:.2f} ms, {(tenant / plain - 1) * 100:+.1f}% "
            f"({'met' if tenant <= 1.1 * plain else 'MISSED'})"
        )
    for r in results:
        if r.variant.startswith("pipeline"):
            p95, p99 = r.quantiles_ms[2], r.quantiles_ms[3]
            print(
                f"{r.variant}: guide P95<=10 ms {'met' if p95 <= 10 else 'MISSED'}; guide P99<=20 "
                f"ms {'met' if p99 <= 20 else 'MISSED'}; our P99<=2 ms at {args.rate:.0f}/s "
                f"{'met' if p99 <= 2 else 'MISSED'} ({p99:.2f}); server CPU<=100 µs/request "
                f"{'met' if r.server_cpu_us <= 100 else 'MISSED'} ({r.server_cpu_us:.0f})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=5000)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--window-us", type=int, default=250, help="for pipeline-window")
    parser.add_argument("--uvloop", action="store_true", help="run the server on uvloop")
    parser.add_argument(
        "--serve",
        nargs=4,
        metavar=("PORT", "REDIS_URL", "VARIANT", "WINDOW_US"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.seconds * args.rate > 200_000:
        parser.error("bounded: at most 200,000 requests per variant")
    if args.serve:
        runner = __import__("uvloop").run if args.uvloop else asyncio.run
        runner(serve(int(args.serve[0]), args.serve[1], args.serve[2], int(args.serve[3])))
        return
    variants = [v for v in args.variants.split(",") if v]
    if unknown := set(variants) - set(VARIANTS):
        parser.error(f"unknown variants: {sorted(unknown)}")
    redis = RedisServer(port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="urr-bench-")))
    redis.start()
    results: list[Result] = []
    try:
        for variant in variants:
            redis.flushall()
            port = free_port()
            argv = [sys.executable, __file__, "--serve", str(port), redis.url, variant]
            argv.append(str(args.window_us))
            server = subprocess.Popen([*argv, *(["--uvloop"] if args.uvloop else [])])  # noqa: S603
            try:
                wait_listening("127.0.0.1", port, 20, "check app")
                results.append(asyncio.run(run_load(args, port, server.pid, variant)))
            finally:
                server.terminate()
                server.wait(timeout=10)
    finally:
        redis.stop()
        shutil.rmtree(redis.workdir, ignore_errors=True)
    report(args, results)


if __name__ == "__main__":
    main()
