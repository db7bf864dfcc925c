"""Limiter decision benchmark: ours (pipelined and per call) vs `limits` vs a bare PING.

Run manually (never part of the test run):

    uv run python bench/ratelimit_limiter.py [--decisions 20000] [--rounds 3] [--uvloop]

Starts a private redis-server on a free loopback port (no persistence) unless --redis-url is
given, and measures, on the same Redis and the same redis-py (hiredis) client, in one run:

* ``ping``          a bare redis-py PING round trip: the baseline the targets are stated in;
* ``ours``          ``SlidingWindowLimiter.check``, default ``transport=pipeline`` (full path:
                    deny-cache lookup, breaker, budget, Lua script on the lean auto-pipelined
                    connection, decision, metrics);
* ``ours-tick``     the same limiter writing whole ticks (``pipeline_max_batch`` 10,000; the
                    default 16 writes a batch mid-tick, so Redis runs it while the rest of the
                    tick is decided): the pipelined path before that change;
* ``ours-per-call`` the same limiter with ``transport=per_call`` (one redis-py call per
                    decision: the path before pipelining);
* ``ours-rpy-pipe`` the same limiter on a store that batches each tick's decisions through
                    redis-py's own ``pipeline(transaction=False)`` (the other way to batch,
                    measured to choose between them; lives only in this script);
* ``lean-ping``     PING through the pipelined store's lean connection (its floor);
* ``limits-mw``     ``limits.aio`` MovingWindowRateLimiter.hit, redis-py implementation;
* ``limits-swc``    ``limits.aio`` SlidingWindowCounterRateLimiter.hit (approximate; for scale);
* ``ours-tenant``   a tenant decision as the check API and the gateway make it for an API key:
                    the governing policy looked up in a published set (10,000 tenants, a
                    tenant policy and the seed defaults), then ``check_tenant`` with a monthly
                    quota: ``tenant_decision.lua`` (windows, quota, near-limit; usage is
                    tallied in memory) on the same pipelined connection. Compare with
                    ``ours``, the policy-less decision (issue 18's target: P50 within 10%).

``--contenders ours,ours-tenant,ping`` measures a subset (same interleaving); ``--keys 1000``
rotates over fewer subjects and tenants, so their keys (window logs, quota counters) exist
already, as for a service with steady tenants; 10,000 (the default) is the cold case.
``--batch-sizes 16,10000`` measures only 32-way throughput instead: redis-py PING and the
limiter at each ``pipeline_max_batch`` (each size twice, to show the noise), in short rounds
taking turns (``--rounds``, default 3; use 11+), as the median of each round's ratio to PING.
``--script-stats N`` adds Redis's own time per script call (``INFO commandstats``) for each
contender, N calls a round, after the rest.

Latency: one decision in flight, the contenders taking turns decision by decision (so noise
from the rest of the machine hits all alike). Throughput: 32 decisions in flight, per
contender, in rounds (median). Subjects
rotate over 10,000 keys with a 100/minute limit, so decisions are "allowed" (the common path).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from limits import RateLimitItemPerMinute
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_common.ratelimit_policies import Policy, PolicySet, default_policies
from urr_devstack.procs import RedisServer, free_port
from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter
from urr_gateway.ratelimit.pipeline import PipelinedSlidingLog
from urr_gateway.ratelimit.store import (
    CategoryCalls,
    ScriptResult,
    load_script_source,
    parse_reply,
)
from urr_gateway.ratelimit.tenant import CompiledPolicies
from urr_gateway.ratelimit.window import WindowSpec

KEYS = 10_000
#: Decisions in each 32-way round, at the least. A round of --decisions / --rounds (6,667 at
#: 20,000 and 3) lasted about 0.1 s for the limiter, and the median of three such rounds
#: ranged from 1.99x to 3.10x PING between identical runs on 2026-12-07.
THROUGHPUT_ROUND_MIN = 20_000
Op = Callable[[int], Awaitable[object]]


def percentile(sorted_values: list[float], fraction: float) -> float:
    index = min(len(sorted_values) - 1, max(0, round(fraction * (len(sorted_values) - 1))))
    return sorted_values[index]


async def run_concurrent(op: Op, count: int, offset: int, in_flight: int) -> float:
    counter = iter(range(count))

    async def worker() -> None:
        for i in counter:
            await op(offset + i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    return count / (time.perf_counter() - started)


class RedisPyPipelineStore:
    """Batches a tick's decisions through redis-py's ``pipeline(transaction=False)``: the
    alternative to the lean connection, for comparison only (no NOSCRIPT or cluster care)."""

    def __init__(self, redis: Redis) -> None:
        self._redis = redis
        self._source = load_script_source()
        self._sha = ""
        self._calls = CategoryCalls()
        self._batch: list[tuple[list[object], asyncio.Future[object]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def load(self) -> None:
        self._sha = await self._redis.script_load(self._source)

    async def ping(self) -> None:
        await self._redis.ping()

    async def aclose(self) -> None:
        return None

    async def evaluate(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None = None,
    ) -> ScriptResult:
        call = self._calls.get(category, specs)
        keys = ["{" + subject + "}" + suffix for suffix in call.suffixes]
        args = [self._sha, len(keys), *keys, cost, len(specs), 0, *call.window_args]
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        if not self._batch:
            loop.call_soon(self._flush)
        self._batch.append((args, future))
        reply = await future
        return parse_reply(reply, len(specs), False)  # type: ignore[arg-type]

    def _flush(self) -> None:
        batch, self._batch = self._batch, []
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[list[object], asyncio.Future[object]]]) -> None:
        pipe = self._redis.pipeline(transaction=False)
        for args, _ in batch:
            pipe.evalsha(*args)  # type: ignore[arg-type]
        try:
            replies = await pipe.execute()
        except Exception as exc:  # handed to every waiter
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), reply in zip(batch, replies, strict=True):
            if not future.done():
                future.set_result(reply)


def contenders(
    redis: Redis,
    storage: RedisStorage,
    ours: SlidingWindowLimiter,
    whole_tick: SlidingWindowLimiter,
    per_call: SlidingWindowLimiter,
    rpy_pipe: SlidingWindowLimiter,
    lean: PipelinedSlidingLog,
    tenant_limiter: SlidingWindowLimiter,
) -> dict[str, Op]:
    moving = MovingWindowRateLimiter(storage)
    sliding = SlidingWindowCounterRateLimiter(storage)
    item = RateLimitItemPerMinute(100)

    async def op_ping(_: int) -> object:
        return await redis.ping()

    published = tenant_policy_set()

    async def op_tenant(i: int) -> object:
        tenant = f"tenant-{i % KEYS}"
        compiled = published.governing(tenant, "GET", "/api/v1/events/e1")
        assert compiled is not None
        decided = await tenant_limiter.check_tenant(
            tenant, compiled, quota=published.quotas.get(tenant, 0)
        )
        if decided.decision.source != "redis" or decided.quota_remaining is None:
            raise RuntimeError(f"not a Redis decision with a quota: {decided}")
        return decided

    async def op_lean_ping(_: int) -> object:
        await lean.ping()
        return None

    async def op_limits_mw(i: int) -> object:
        return await moving.hit(item, f"ip:10.2.{i % KEYS}")

    async def op_limits_swc(i: int) -> object:
        return await sliding.hit(item, f"ip:10.3.{i % KEYS}")

    return {
        "ping": op_ping,
        "ours": checking_op(ours, "ip:10.0."),
        "ours-tick": checking_op(whole_tick, "ip:10.5."),
        "ours-per-call": checking_op(per_call, "ip:10.1."),
        "ours-rpy-pipe": checking_op(rpy_pipe, "ip:10.4."),
        "lean-ping": op_lean_ping,
        "limits-mw": op_limits_mw,
        "limits-swc": op_limits_swc,
        "ours-tenant": op_tenant,
    }


def tenant_policy_set() -> CompiledPolicies:
    """What the admin service would publish for 10,000 tenants with quotas, one of them with
    a policy of its own (lookups walk the tenant's and the default policies)."""
    own = Policy.model_validate(
        {
            "id": "t0-events",
            "tenant": "tenant-0",
            "name": "t0-events",
            "route": "/api/v1/events/**",
            "windows": [{"limit": 100, "window_s": 60}],
            "priority": 20,
        }
    )
    return CompiledPolicies(
        PolicySet(
            version=1,
            policies=(*default_policies(), own),
            quotas={f"tenant-{i}": 10**9 for i in range(KEYS)},
        )
    )


async def measure(ops: dict[str, Op], args: argparse.Namespace, redis: Redis) -> None:
    for op in ops.values():  # warm up connections and scripts
        for i in range(200):
            await op(i)
    latencies: dict[str, list[float]] = {name: [] for name in ops}
    # Latency: one decision in flight, contenders taking turns decision by decision, so load
    # from the rest of the machine falls on all of them alike.
    started = time.perf_counter()
    for i in range(args.decisions):
        for name, op in ops.items():
            t0 = time.perf_counter()
            await op(i)
            latencies[name].append(time.perf_counter() - t0)
    sequential_s = time.perf_counter() - started
    # Throughput: 32 decisions in flight, contenders in turn, several rounds (median).
    conc_rates: dict[str, list[float]] = {name: [] for name in ops}
    per_round = throughput_round(args)
    for round_index in range(args.rounds):
        for name, op in ops.items():
            offset = (round_index + 1) * args.decisions
            conc_rates[name].append(await run_concurrent(op, per_round, offset, 32))
    await report(latencies, conc_rates, args, redis, sequential_s)
    if args.script_stats:
        await script_stats(ops, args, redis)


def throughput_round(args: argparse.Namespace) -> int:
    """Decisions per contender in each 32-way round."""
    return max(int(args.decisions) // int(args.rounds), THROUGHPUT_ROUND_MIN)


async def script_stats(ops: dict[str, Op], args: argparse.Namespace, redis: Redis) -> None:
    """Redis's own time per script call (``INFO commandstats``, ``cmdstat_evalsha``), each
    contender alone for ``--script-stats`` calls, 5 rounds, contenders taking turns: what the
    script costs inside Redis, apart from the round trip and the client."""
    per_call: dict[str, list[float]] = {}
    for round_index in range(5):
        for name, op in ops.items():
            if name == "ping":
                continue
            await redis.config_resetstat()
            offset = (10 + round_index) * args.decisions
            for i in range(args.script_stats):
                await op(offset + i)
            stats = await redis.info("commandstats")
            evalsha = stats.get("cmdstat_evalsha")
            if evalsha:
                per_call.setdefault(name, []).append(float(evalsha["usec_per_call"]))
    for name, values in per_call.items():
        print(
            f"redis time per EVALSHA, {name}: {statistics.median(values):.1f} µs "
            f"(median of {len(values)} rounds of {args.script_stats} calls)"
        )


def checking_op(limiter: SlidingWindowLimiter, prefix: str) -> Op:
    """A decision of ``limiter`` for one of KEYS subjects; anything but Redis's is an error
    (a degraded decision would flatter the contender)."""

    async def op(i: int) -> object:
        decision = await limiter.check(f"{prefix}{i % KEYS}", "general")
        if decision.source != "redis":
            raise RuntimeError(f"not a Redis decision: {decision}")
        return decision

    return op


async def compare_batch_sizes(
    redis: Redis, client: Callable[[], Redis], args: argparse.Namespace
) -> None:
    """32-way rounds of PING and of the limiter at each batch size, taking turns; the median
    of the per-round ratios to PING (pairs within a round share the machine's load)."""
    sizes = [int(size) for size in args.batch_sizes.split(",")]
    ops: dict[str, Op] = {"ping": lambda _: redis.ping()}
    limiters = []
    for copy in range(2):
        for size in sizes:
            settings = RateLimitSettings(budget_ms=1000, pipeline_max_batch=size)
            limiter = SlidingWindowLimiter(client(), settings, registry=CollectorRegistry())
            await limiter.prepare()
            limiters.append(limiter)

            ops[f"batch {size} #{copy + 1}"] = checking_op(limiter, f"ip:b{size}.{copy}.")
    count = args.decisions // 5
    rates: dict[str, list[float]] = {name: [] for name in ops}
    try:
        for round_index in range(args.rounds):
            for name, op in ops.items():
                rates[name].append(await run_concurrent(op, count, round_index * count, 32))
    finally:
        for limiter in limiters:
            await limiter.aclose()
    print(
        f"32-way, {args.rounds} rounds of {count} decisions, load average {os.getloadavg()[0]:.1f}"
    )
    for name, values in rates.items():
        ratios = [value / ping for value, ping in zip(values, rates["ping"], strict=True)]
        print(
            f"{name:<16} {statistics.median(values):9.0f}/s  "
            f"median ratio to PING {statistics.median(ratios):5.2f}x"
        )


async def main(args: argparse.Namespace) -> None:
    server: RedisServer | None = None
    url = args.redis_url
    if url is None:
        server = RedisServer(port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="urr-bench-")))
        server.start()
        url = server.url
    clients: list[Redis] = []

    def client() -> Redis:
        clients.append(Redis.from_url(url, max_connections=64))
        return clients[-1]

    redis = client()
    if args.batch_sizes:
        try:
            await compare_batch_sizes(redis, client, args)
        finally:
            for each in clients:
                await each.aclose()
            if server is not None:
                server.stop()
                shutil.rmtree(server.workdir, ignore_errors=True)
        return
    storage = RedisStorage(url.replace("redis://", "async+redis://"), implementation="redispy")
    try:
        await redis.flushall()
        # A budget no healthy call reaches even on a loaded machine: every measured decision
        # must be a Redis decision (the ops check), or the comparison would flatter us.
        generous = RateLimitSettings(budget_ms=1000)
        # One client (pool of 64) per contender, as each would have in a service.
        ours = SlidingWindowLimiter(client(), generous, registry=CollectorRegistry())
        whole_tick = SlidingWindowLimiter(
            client(),
            generous.model_copy(update={"pipeline_max_batch": 10_000}),
            registry=CollectorRegistry(),
        )
        per_call = SlidingWindowLimiter(
            client(),
            generous.model_copy(update={"transport": "per_call"}),
            registry=CollectorRegistry(),
        )
        rpy_client = client()
        rpy_pipe = SlidingWindowLimiter(
            rpy_client,
            generous,
            registry=CollectorRegistry(),
            store=RedisPyPipelineStore(rpy_client),
        )
        for limiter in (ours, whole_tick, per_call, rpy_pipe):
            await limiter.prepare()
        lean = PipelinedSlidingLog(client())
        await lean.load()
        tenant_limiter = SlidingWindowLimiter(client(), generous, registry=CollectorRegistry())
        await tenant_limiter.prepare()
        try:
            ops = contenders(
                redis, storage, ours, whole_tick, per_call, rpy_pipe, lean, tenant_limiter
            )
            if args.contenders:
                wanted = args.contenders.split(",")
                ops = {name: op for name, op in ops.items() if name in wanted}
            await measure(ops, args, redis)
        finally:
            for limiter in (ours, whole_tick, per_call, rpy_pipe, tenant_limiter):
                await limiter.aclose()
            await lean.aclose()
    finally:
        # limits has no close(); its bridge owns a redis-py client.
        await storage.bridge.get_connection().aclose()  # type: ignore[attr-defined]
        for each in clients:
            await each.aclose()
        if server is not None:
            server.stop()
            shutil.rmtree(server.workdir, ignore_errors=True)


async def report(
    latencies: dict[str, list[float]],
    conc_rates: dict[str, list[float]],
    args: argparse.Namespace,
    redis: Redis,
    sequential_s: float,
) -> None:
    info = await redis.info("server")
    load = os.getloadavg()[0]
    print(
        f"redis {info['redis_version']}, {args.decisions} decisions per contender over "
        f"{KEYS} keys, "
        f"{args.rounds} throughput rounds of {throughput_round(args)}, load average {load:.1f}, "
        f"sequential phase {sequential_s:.1f} s"
    )
    header = (
        f"{'contender':<14} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} {'p99.9 µs':>9} "
        f"{'1-way/s':>8} {'32-way/s':>9} {'p50/ping':>9} {'32w/ping':>9}"
    )
    print(header)
    print("-" * len(header))
    ping_p50 = statistics.median(latencies["ping"])
    ping_32 = statistics.median(conc_rates["ping"])
    for name, values in latencies.items():
        ordered = sorted(values)
        p50 = percentile(ordered, 0.50)
        rate_32 = statistics.median(conc_rates[name])
        print(
            f"{name:<14} {p50 * 1e6:8.0f} {percentile(ordered, 0.90) * 1e6:8.0f} "
            f"{percentile(ordered, 0.99) * 1e6:8.0f} {percentile(ordered, 0.999) * 1e6:9.0f} "
            f"{len(values) / sum(values):8.0f} {rate_32:9.0f} "
            f"{p50 / ping_p50:9.2f} {rate_32 / ping_32:9.2f}"
        )
    ours_p50 = statistics.median(latencies["ours"])
    ours_32 = statistics.median(conc_rates["ours"])
    if "ours-tenant" in latencies:
        tenant_p50 = statistics.median(latencies["ours-tenant"])
        print(
            f"target: tenant decision (policy + quota) P50 within 10% of the policy-less one: "
            f"{tenant_p50 * 1e6:.0f} vs {ours_p50 * 1e6:.0f} µs, "
            f"{(tenant_p50 / ours_p50 - 1) * 100:+.1f}% "
            f"({'met' if tenant_p50 <= 1.1 * ours_p50 else 'MISSED'})"
        )
    if "limits-mw" not in latencies:
        return
    mw_p50 = statistics.median(latencies["limits-mw"])
    print(
        f"targets: ours P50 <= 1.3x PING: {ours_p50 / ping_p50:.2f}x "
        f"({'met' if ours_p50 <= 1.3 * ping_p50 else 'MISSED'}); "
        f"ours P50 below limits-mw: {ours_p50 * 1e6:.0f} vs {mw_p50 * 1e6:.0f} µs "
        f"({'met' if ours_p50 < mw_p50 else 'MISSED'}); "
        f"ours 32-way >= 2x PING 32-way: {ours_32 / ping_32:.2f}x "
        f"({'met' if ours_32 >= 2 * ping_32 else 'MISSED'})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--decisions", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--redis-url", default=None)
    parser.add_argument("--contenders", default="", help="comma-separated subset (with ping)")
    parser.add_argument(
        "--keys",
        type=int,
        default=KEYS,
        help="subjects / tenants rotated over (fewer: each is hit more often, its keys warm)",
    )
    parser.add_argument(
        "--script-stats",
        type=int,
        default=0,
        help="also measure Redis's time per script call (INFO commandstats), N calls a round",
    )
    parser.add_argument(
        "--batch-sizes",
        default="",
        help="only compare 32-way throughput at these pipeline_max_batch values (e.g. 16,10000)",
    )
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    arguments = parser.parse_args()
    KEYS = arguments.keys
    if arguments.uvloop:
        import uvloop

        uvloop.run(main(arguments))
    else:
        asyncio.run(main(arguments))
