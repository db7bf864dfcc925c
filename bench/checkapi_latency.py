"""Check API latency under an open-loop load: ``POST /internal/v1/ratelimit/check``.

Run manually (never part of the test run):

    uv run python bench/checkapi_latency.py [--rate 5000] [--seconds 10] [--connections 16]
        [--variants lean,pipeline,per_call,ping,limits-mw] [--uvloop]
        [--generator split,split+pin,split+lazy,split+ticks,asyncio] [--rounds N] [--probe]

Starts a private redis-server and, one variant after the other, the check app
(``create_check_app``) in a separate server process on free loopback ports, then sends
requests at a fixed rate whatever the answers' speed (open loop), each request's latency
measured from its *due* time, so a stalled server (or a late generator) shows up in the
figures instead of slowing the generator down (no coordinated omission).

Generators (``--generator``, several compared in one run, alternating with ``--rounds``):

* ``split`` (``openloop.py``; the default is ``split+lazy``): two processes of their own,
  a sender that sends request k at exactly t0 + k / rate (evenly spaced; sleeps with 1 µs
  timer slack, no event loop) over ``--connections`` keep-alive connections (round robin,
  pipelined when the previous answer is still owed), and a receiver that takes each
  answer's arrival time from the kernel's receive timestamp (``SO_TIMESTAMPNS``), so
  neither's scheduling is counted as the server's. Printed: latency from the due time,
  latency from the actual send (server, Redis and loopback only), and the generator's lag
  (sent - due), P50/P99/P99.9 each;
* ``asyncio``: the earlier generator, in this process on the event loop: requests due in
  1 ms bursts (its timers' resolution), one request in flight per connection, a due request
  waiting in a FIFO for a free connection (its "lag" includes that wait);
* options: ``+pin`` (generator on CPU 0, server on CPU 1, Redis free), ``+lazy`` (the split
  receiver reads every 1 ms instead of waking per answer: one wake-up fewer per request on
  two shared cores; the kernel stamps keep each answer's arrival time, except that answers
  read together take the last one's, which errs late), ``+ticks`` (the split sender's
  schedule in 1 ms bursts, as the asyncio generator's), ``+poisson`` (the split sender's
  requests at exponential gaps of the same mean: the bursts of independent callers).

Also printed per row: the server's CPU µs per answer, the generator's, and how many µs per
answer the server and Redis waited runnable for a core (``/proc/PID/schedstat``: the other
processes on the machine, this bench's own included); per server, the garbage collections
during the measured run, and with ``--probe`` the time of each stage inside the server
(``checkapi_probe.py``).

Variants (the same app, limiter, deny cache, metrics and caller check; only the listener
or the Redis side differs):

* ``lean``       what a worker serves: the check API's own listener (``checkserver``,
                 asyncio protocol + httptools) in front of the default pipelined limiter;
* ``lean-window``  the same with ``pipeline_window_us`` and ``check_pipeline_window_us`` =
                 ``--window-us`` (or ``:N``:
                 ``lean-window:250`` for 250 µs, so several windows compare in one run);
* ``NAME@before``  the variant served by ``--before``'s gateway sources (the same bench,
                 Redis and generator: before and after in one run);
* ``lean-untuned``  ``lean`` with the interpreter's garbage collector as it is: every other
                 variant's server tunes it as a gateway worker does once listening
                 (``server.tune_gc`` with ``URR_HTTP__GC_GEN0_THRESHOLD``'s default);
* ``pipeline``   the check app on aiohttp's server (before the lean listener), the default
                 limiter: auto-pipelined script calls on a lean connection;
* ``pipeline-window``  the same with ``pipeline_window_us`` = ``--window-us`` (default 250):
                 batches gather that long, fewer writes per decision at moderate rates;
* ``per_call``   ``transport=per_call``: one redis-py script call per decision (before);
* ``ping``       a store that answers "allowed" after one redis-py PING (the baseline);
* ``limits-mw``  a store calling the `limits` library's moving window (redis-py);
* ``tenant``     the lean listener and default limiter asked in the tenant shape
                 (``{"tenant", "route", "method"}``): a published policy set (the seed
                 defaults, 10,000 tenants with a monthly quota) followed by a
                 ``PolicyWatcher``, the governing policy looked up, and
                 ``tenant_decision.lua`` (windows, quota, usage); compare with ``lean``, the
                 policy-less decision.

Keys rotate over 10,000 tenants (category ``general``, 100/min), so answers are mostly
"allowed"; every 10th request goes to one hot key that is over its limit (deny-cache path).
Targets: the operations guide's P95 <= 10 ms and P99 <= 20 ms; ours P99 <= 2 ms at 5,000/s
and <= 100 server CPU µs per request.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import openloop
import orjson
from gateway_proxy import gateway_source

from urr_devstack.procs import RedisServer, free_port, wait_listening

TENANTS = 10_000
#: The generator's send tick (see ``generate``).
TICK_S = 0.001
VARIANTS = (
    "lean",
    "lean-window",
    "lean-untuned",
    "pipeline",
    "pipeline-window",
    "per_call",
    "ping",
    "limits-mw",
    "tenant",
)
#: A variant named with this suffix is served by ``--before``'s gateway sources.
BEFORE = "@before"
#: Every variant checks the caller's credential, as a worker does (URR_INTERNAL__CALLERS).
CALLER_SECRET = "bench-caller-secret-0123456789abcdef"  # noqa: S105 - a bench's own


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


def store_batches(limiter: Any) -> list[int]:
    """Decisions and Redis writes of a limiter's pipelined store so far (none for others)."""
    nodes = getattr(limiter._store, "nodes", ())
    return [sum(n.commands for n in nodes), sum(n.writes for n in nodes)]


async def serve(
    port: int, redis_url: str, variant: str, window_us: int, probe: bool, report_to: str
) -> None:
    """The server process: the check app alone on ``port``; what it saw during the measured
    run (degraded decisions, garbage collections) goes to the JSON file ``report_to``."""
    from aiohttp import web
    from prometheus_client import CollectorRegistry
    from pydantic import SecretStr
    from redis.asyncio import Redis

    from urr_gateway.checkapi import CHECK_SERVICE_KEY, create_check_app
    from urr_gateway.checkserver import CheckSite
    from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter
    from urr_gateway.server import tune_gc
    from urr_gateway.settings import GatewayHttpSettings

    loop = asyncio.get_running_loop()
    stages = None
    if probe:  # before any connection is made (uvloop binds a protocol's methods then)
        from checkapi_probe import Probe

        stages = Probe()
        stages.install(loop)
    redis = Redis.from_url(redis_url, max_connections=64, socket_timeout=0.5)
    registry = CollectorRegistry()
    # The window of the "-window" variants; every other variant the settings' default.
    window = window_settings(RateLimitSettings, window_us) if "-window" in variant else {}
    # checkapi_callgrind.py raises the budget: under valgrind a reply takes milliseconds.
    budget = os.environ.get("URR_CHECKAPI_BENCH_BUDGET_MS")
    settings = RateLimitSettings(
        transport="per_call" if variant == "per_call" else "pipeline",
        **window,
        **({"budget_ms": float(budget)} if budget else {}),
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
    callers = {"bench": SecretStr(CALLER_SECRET)}
    app = create_check_app(limiter, registry=registry, policies=policies, callers=callers)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite
    if variant.startswith("lean") or variant == "tenant":
        site = CheckSite(runner, app[CHECK_SERVICE_KEY], "127.0.0.1", port, drain_timeout_s=1)
    else:
        site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    # As a worker does once listening (the check listener shares the gateway's process).
    tune_gc(0 if variant.endswith("-untuned") else GatewayHttpSettings().gc_gen0_threshold)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    at_start: list[float] = []
    written: list[int] = []

    def degraded() -> float:
        return sum(
            registry.get_sample_value(
                "urr_ratelimit_degraded_decisions_total", {"category": c, "policy": p}
            )
            or 0.0
            for c in ("general",)
            for p in ("open", "local")
        )

    def measured_run_starts() -> None:  # SIGUSR1 from the bench, after the warm-up
        at_start[:] = [degraded(), *(gen["collections"] for gen in gc.get_stats())]
        written[:] = store_batches(limiter)
        if stages is not None:
            stages.start()

    loop.add_signal_handler(signal.SIGUSR1, measured_run_starts)
    await stop.wait()
    if stages is not None:
        print(f"  server ({variant}), probed:\n{stages.report()}", flush=True)
    if at_start:
        now = [degraded(), *(gen["collections"] for gen in gc.get_stats())]
        seen = [int(after - before) for after, before in zip(now, at_start, strict=True)]
        commands, writes = store_batches(limiter)
        Path(report_to).write_bytes(  # noqa: ASYNC240 - once, while the server stops
            orjson.dumps(
                {
                    "degraded": seen[0],
                    "gc": "/".join(map(str, seen[1:])),
                    "own_p99_ms": own_p99_ms(registry),
                    "per_write": (commands - written[0]) / max(1, writes - written[1]),
                }
            )
        )
    await runner.cleanup()
    if policies is not None:
        await policies.stop()
    await limiter.aclose()
    await redis.aclose()


def window_settings(settings: Any, window_us: int) -> dict[str, int]:
    """The settings of a ``-window`` variant: both the gateway's and the check API's window
    (a revision from before the check API had its own: the one window there was)."""
    window = {"pipeline_window_us": window_us}
    if "check_pipeline_window_us" in settings.model_fields:
        window["check_pipeline_window_us"] = window_us
    return window


def own_p99_ms(registry: Any) -> str:
    """The upper bound of the check-request histogram bucket holding the server's own P99."""
    counts: dict[float, float] = {}
    for metric in registry.collect():
        if metric.name != "urr_ratelimit_check_request_seconds":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_bucket") and sample.labels["outcome"] != "invalid":
                bound = float(sample.labels["le"])
                counts[bound] = counts.get(bound, 0.0) + sample.value
    if not counts or not counts[float("inf")]:
        return "?"
    total = counts[float("inf")]
    bound = next(b for b in sorted(counts) if counts[b] >= 0.99 * total)
    return "inf" if bound == float("inf") else f"{bound * 1000:g}"


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
        f"Authorization: Bearer {CALLER_SECRET}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


class LoadConnection(asyncio.Protocol):
    """One keep-alive connection of the generator's pool: one request in flight at a time
    (as a client pool without pipelining), answers parsed from the raw bytes (cheap, so the
    generator's own cost stays small next to the server's)."""

    def __init__(self, pool: LoadPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.due = 0.0
        self.lost = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(None)

    def send(self, payload: bytes, due: float) -> None:
        self.due = due
        self.pool.lags.append(time.perf_counter() - due)
        assert self.transport is not None
        self.transport.write(payload)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self.buffer[:end]
        at = head.lower().find(b"content-length:")
        length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) > 0 else None])
        if len(self.buffer) < end + 4 + length:
            return
        self.pool.latencies.append(time.perf_counter() - self.due)
        if head[9:12] != b"200":
            self.pool.errors.append(head[9:12].decode())
        self.buffer = self.buffer[end + 4 + length :]
        self.pool.done(self)


class LoadPool:
    """The client side: requests due go to an idle connection, or wait in one FIFO for the
    next connection to come free (a client pool), their latency running from the due time."""

    def __init__(self) -> None:
        self.idle: list[LoadConnection] = []
        self.backlog: deque[tuple[bytes, float]] = deque()
        self.latencies: list[float] = []
        self.lags: list[float] = []
        self.wakeups: list[float] = []
        self.errors: list[str] = []
        self.expected = -1
        self.all_answered = asyncio.get_running_loop().create_future()

    def submit(self, payload: bytes, due: float) -> None:
        if self.idle:
            self.idle.pop().send(payload, due)
        else:
            self.backlog.append((payload, due))

    def done(self, connection: LoadConnection) -> None:
        if len(self.latencies) == self.expected and not self.all_answered.done():
            self.all_answered.set_result(None)
        if self.backlog:
            connection.send(*self.backlog.popleft())
        else:
            self.idle.append(connection)


async def generate(
    args: argparse.Namespace, port: int, tenant_shape: bool = False
) -> tuple[LoadPool, float]:
    """Send at ``args.rate`` whatever the answers do; latencies from each request's due time.
    The pool's ``lags``: how late each request left this process (the sleep's granularity, a
    wait for a free connection, the generator's own stalls): all of it is in the latency,
    the honest side to err on, and the lag says how much of it was not the server's."""
    loop = asyncio.get_running_loop()
    pool = LoadPool()
    connections = [
        (await loop.create_connection(lambda: LoadConnection(pool), "127.0.0.1", port))[1]
        for _ in range(args.connections)
    ]
    pool.idle.extend(connections)
    total = int(args.rate * args.seconds)
    payloads = [request_bytes(index, tenant_shape) for index in range(total)]
    # The schedule: ticks of TICK_S, each due to send rate x TICK_S requests at its start
    # (request k is due at start + floor(k / per_tick) x TICK_S). Not one request every
    # 1/rate s: uvloop's timers have millisecond resolution and a shorter sleep spins a core
    # (measured: 500,000 wake-ups/s), CPU the server and Redis need; so requests are due in
    # the small bursts they can really be sent in, and any lateness of the generator's
    # wake-up is still in the latency (the lag column).
    per_tick = args.rate * TICK_S
    start = time.perf_counter() + 0.05
    sent = 0
    while sent < total:
        now = time.perf_counter()
        # Everything due by now goes out now: the schedule never waits for answers.
        first = True
        while sent < total and (due := start + (sent // per_tick) * TICK_S) <= now:
            if first:  # how late this process woke for its oldest due request
                pool.wakeups.append(now - due)
                first = False
            pool.submit(payloads[sent], due)
            sent += 1
        await asyncio.sleep(max(0.0, start + (sent // per_tick) * TICK_S - time.perf_counter()))
    pool.expected = total
    if len(pool.latencies) < total:
        await pool.all_answered
    elapsed = time.perf_counter() - start
    for connection in connections:
        assert connection.transport is not None
        connection.transport.close()
        await connection.lost
    return pool, elapsed


def percentile(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def user_system_seconds(pid: int) -> tuple[float, float]:
    """User and system CPU time of a process so far, apart (``/proc/PID/stat``): the system
    share is the kernel's work for it (on loopback a socket write also runs the receiver's
    TCP processing), which callgrind's instruction counts do not see."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def activity(pid: int) -> tuple[int, int]:
    """A process's read and write system calls so far (``/proc/PID/io``: ``syscr`` +
    ``syscw``, sockets included) and its voluntary context switches (each a sleep: for an
    event loop, one wake-up from ``epoll_wait``). Neither depends on how busy the machine
    is, as long as the process keeps up."""
    io = dict(line.split(": ") for line in Path(f"/proc/{pid}/io").read_text().splitlines())
    status = Path(f"/proc/{pid}/status").read_text()
    switches = int(status.split("voluntary_ctxt_switches:")[1].split()[0])
    return int(io["syscr"]) + int(io["syscw"]), switches


def runqueue_wait_s(pid: int) -> float:
    """How long a process has waited, runnable, for a CPU so far (``/proc/PID/schedstat``:
    the scheduler's run-queue delay summed over its threads' lives)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


#: Quantiles printed: P50, P99, P99.9 (and the max).
QUANTILES = (0.5, 0.99, 0.999)


def summary(values: list[float]) -> list[float]:
    """P50, P99, P99.9 and max of ``values`` (seconds) in ms."""
    ordered = sorted(values)
    if not ordered:
        return [float("nan")] * 4
    return [percentile(ordered, q) * 1000 for q in QUANTILES] + [ordered[-1] * 1000]


@dataclass
class Result:
    variant: str
    generator: str
    answers: int
    rate: float
    errors: int
    #: From each request's due time: P50, P99, P99.9, max (ms).
    latency_ms: list[float]
    #: From each request's actual send (the server, Redis and the loopback only).
    after_send_ms: list[float]
    #: How late requests left the generator after their due time: P50, P99, P99.9, max.
    lag_ms: list[float]
    server_cpu_us: float
    generator_cpu_us: float
    load: float
    #: µs per request the server and Redis waited, runnable, for a CPU (another process had it).
    server_wait_us: float = float("nan")
    redis_wait_us: float = float("nan")
    #: Decisions not made by Redis (its budget missed: fail-open) in the measured run.
    degraded: int = 0
    #: Garbage collections gen0/gen1/gen2 in the server during the measured run.
    collections: str = "?"
    #: The bound of the server's own latency histogram bucket holding its P99 (warm-up in).
    own_p99_ms: str = "?"
    #: Per answer: the server's read/write system calls and its sleeps (loop wake-ups).
    syscalls: float = float("nan")
    wakeups: float = float("nan")
    #: Commands per Redis write of the pipelined store (how many decisions a write carried).
    per_write: float = float("nan")
    #: Of ``server_cpu_us``: the kernel's share (system time), µs per answer.
    server_system_us: float = float("nan")


#: ``--generator`` names: a base (``split`` or ``asyncio``) and options joined by ``+``.
GENERATOR_OPTIONS = {
    "lazy": "split: the receiver reads every 1 ms instead of on each answer (fewer wake-ups)",
    "ticks": "split: requests due in 1 ms bursts (the asyncio generator's schedule)",
    "pin": "the generator on CPU 0, the server on CPU 1 (Redis and everything else free)",
    "poisson": "split: Poisson arrivals at the same mean rate (independent callers' bursts)",
}


def generator_parts(generator: str) -> tuple[str, set[str]]:
    base, *options = generator.split("+")
    return base, set(options)


def warm_up(args: argparse.Namespace, port: int, tenant_shape: bool, options: set[str]) -> None:
    """Connections, script, caches: 1 s at up to 500/s, not measured."""
    rate = min(args.rate, 500)
    payloads = [request_bytes(index, tenant_shape) for index in range(int(rate))]
    openloop.run(port, payloads, rate, args.connections, **split_options(options))


def split_options(options: set[str]) -> dict[str, Any]:
    return {
        "cpus": {0} if "pin" in options else None,
        "tick_s": TICK_S if "ticks" in options else 0.0,
        "poll_s": 0.001 if "lazy" in options else 0.0,
        "poisson": "poisson" in options,
    }


@dataclass
class Target:
    """The server under test, its port, and the Redis it decides with."""

    port: int
    server: subprocess.Popen[bytes]
    redis_pid: int
    variant: str
    #: At the measured run's start: the server's CPU s and both run-queue waits.
    marks: tuple[float, float, float] = (0.0, 0.0, 0.0)
    #: At the measured run's start: the server's system CPU s (the rest is user time).
    system_mark: float = 0.0
    #: Per answer over the measured run: the server's system CPU µs (the kernel's share).
    system_us: float = float("nan")
    #: At the measured run's start: the server's read/write system calls and sleeps.
    counts: tuple[int, int] = (0, 0)
    #: Per answer over the measured run (``measured``): those two.
    per_answer: tuple[float, float] = (float("nan"), float("nan"))

    def start_measuring(self) -> None:
        self.server.send_signal(signal.SIGUSR1)  # the measured run starts (probe, GC counts)
        pid = self.server.pid
        user, system = user_system_seconds(pid)
        self.marks = user + system, runqueue_wait_s(pid), runqueue_wait_s(self.redis_pid)
        self.system_mark = system
        self.counts = activity(pid)

    def measured(self, answers: int) -> tuple[float, float, float]:
        """Per answer since ``start_measuring``: server CPU µs, server and Redis wait µs."""
        pid = self.server.pid
        user, system = user_system_seconds(pid)
        now = user + system, runqueue_wait_s(pid), runqueue_wait_s(self.redis_pid)
        self.system_us = (system - self.system_mark) / max(1, answers) * 1e6
        self.per_answer = tuple(  # type: ignore[assignment]
            (after - before) / max(1, answers)
            for after, before in zip(activity(pid), self.counts, strict=True)
        )
        cpu, server_wait, redis_wait = (
            (after - before) / max(1, answers) * 1e6
            for after, before in zip(now, self.marks, strict=True)
        )
        return cpu, server_wait, redis_wait


def run_split(args: argparse.Namespace, target: Target, generator: str) -> Result:
    """The two-process generator (``openloop``): precise sends, kernel receive stamps."""
    tenant_shape = target.variant == "tenant"
    options = generator_parts(generator)[1]
    warm_up(args, target.port, tenant_shape, options)
    total = int(args.rate * args.seconds)
    payloads = [request_bytes(index, tenant_shape) for index in range(total)]
    target.start_measuring()
    measured = openloop.run(
        target.port, payloads, args.rate, args.connections, **split_options(options)
    )
    due, sent, answered = measured.due, measured.sent, measured.answered
    done = [k for k in range(total) if answered[k] > 0.0]
    # A request never answered (the receiver gives up 10 s after the last due time) counts
    # as infinitely late, so a tail it belongs to reads "inf" instead of being dropped.
    never = [float("inf")] * (total - len(done))
    latency = [answered[k] - due[k] for k in done] + never
    after_send = [answered[k] - sent[k] for k in done] + never
    lag = [sent[k] - due[k] for k in range(total)]
    elapsed = max((answered[k] for k in done), default=due[0]) - due[0]
    server_cpu, server_wait, redis_wait = target.measured(len(done))
    return Result(
        target.variant,
        generator,
        len(done),
        len(done) / elapsed if elapsed > 0 else 0.0,
        measured.non_200 + len(never),
        summary(latency),
        summary(after_send),
        summary(lag),
        server_cpu,
        (measured.sender_cpu_s + measured.receiver_cpu_s) / max(1, len(done)) * 1e6,
        os.getloadavg()[0],
        server_wait,
        redis_wait,
    )


async def run_asyncio(args: argparse.Namespace, target: Target, generator: str) -> Result:
    """The earlier in-process generator (one event loop, 1 ms ticks), for comparison."""
    warm = argparse.Namespace(**{**vars(args), "rate": min(args.rate, 500), "seconds": 1})
    tenant_shape = target.variant == "tenant"
    await generate(warm, target.port, tenant_shape)
    target.start_measuring()
    own_cpu = time.process_time()
    pool, elapsed = await generate(args, target.port, tenant_shape)
    own_cpu = time.process_time() - own_cpu
    answers = len(pool.latencies)
    server_cpu, server_wait, redis_wait = target.measured(answers)
    return Result(
        target.variant,
        generator,
        answers,
        answers / elapsed,
        len(pool.errors),
        summary(pool.latencies),
        [float("nan")] * 4,  # this generator keeps no send times
        summary(pool.lags),
        server_cpu,
        own_cpu / answers * 1e6,
        os.getloadavg()[0],
        server_wait,
        redis_wait,
    )


def report(args: argparse.Namespace, results: list[Result]) -> None:
    print(
        f"\nopen loop {args.rate:.0f}/s for {args.seconds:.0f} s over {args.connections} "
        f"connections per variant; load average now {os.getloadavg()[0]:.2f}"
    )
    print(
        "generators: split = two processes, evenly spaced sends, kernel receive stamps; "
        "asyncio = the earlier in-process generator (1 ms bursts)"
        + "".join(f"; +{name}: {text}" for name, text in GENERATOR_OPTIONS.items())
    )
    print(
        "latency = answer received - request DUE (all of it counted, no coordinated omission);"
        "\nafter send = answer received - request sent (server + Redis + loopback); lag = sent"
        " - due (the generator's own lateness, inside latency). Each: P50 / P99 / P99.9 ms."
        "\nsrv µs/req: the server's CPU per answer; runq wait: µs per answer the server and"
        " Redis were runnable but waited for a core (the machine's contention); degraded: answers"
        " the limiter gave without Redis (its 10 ms budget missed: fail-open, not exact);"
        " GC: the server's collections per generation, both during the measured run; errors:"
        " non-200 answers and requests never answered (their latency counted as inf)."
    )
    header = (
        f"{'variant':<19} {'generator':<17} {'answers/s':>9} {'errors':>6}  "
        f"{'latency p50/p99/p99.9':>22} {'max':>6}  {'after send p50/p99/p99.9':>24}  "
        f"{'gen lag p50/p99/p99.9':>21}  {'srv µs/req':>10} {'gen µs/req':>10} "
        f"{'runq wait srv/redis':>19} {'degraded':>8} {'GC 0/1/2':>8} {'load':>5}"
    )
    print(header)
    print("-" * len(header))

    def triple(values: list[float]) -> str:
        return "/".join(f"{v:.2f}" for v in values[:3])

    for r in results:
        print(
            f"{r.variant:<19} {r.generator:<17} {r.rate:9.0f} {r.errors:6d}  "
            f"{triple(r.latency_ms):>22} {r.latency_ms[3]:6.1f}  {triple(r.after_send_ms):>24}  "
            f"{triple(r.lag_ms):>21}  {r.server_cpu_us:10.0f} {r.generator_cpu_us:10.0f} "
            f"{r.server_wait_us:9.0f}/{r.redis_wait_us:<9.0f} {r.degraded:8d} "
            f"{r.collections:>8} {r.load:5.1f}"
        )
    # CPU per request does not depend on how busy the rest of the machine is: it says what
    # one core could serve, where the latencies above also say how much CPU we were given.
    by_name = {(r.variant, r.generator): r for r in results}
    for generator in dict.fromkeys(r.generator for r in results):
        if ("tenant", generator) in by_name and ("lean", generator) in by_name:
            tenant = by_name["tenant", generator].latency_ms[0]
            plain = by_name["lean", generator].latency_ms[0]
            print(
                f"tenant shape P50 within 10% of the policy-less lean P50: {tenant:.2f} vs "
                f"{plain:.2f} ms, {(tenant / plain - 1) * 100:+.1f}% "
                f"({'met' if tenant <= 1.1 * plain else 'MISSED'})"
            )
    for r in results:
        if r.variant.startswith(("pipeline", "lean")):
            p99 = r.latency_ms[1]
            print(
                f"{r.variant} ({r.generator} generator): P99 <= 2 ms at {args.rate:.0f}/s "
                f"{'met' if p99 <= 2 else 'MISSED'} ({p99:.2f} ms, of which the generator's "
                f"lag P99 {r.lag_ms[1]:.2f}; the server's own histogram: P99 <= {r.own_p99_ms} "
                f"ms); {r.degraded} decisions degraded; server CPU <= 100 µs/request "
                f"{'met' if r.server_cpu_us <= 100 else 'MISSED'} ({r.server_cpu_us:.0f})"
            )
    report_medians(results, args.rate)


def report_medians(results: list[Result], rate: float) -> None:
    """Per variant and generator over the rounds: the median of each round's figures (the
    rounds alternate, so each median saw the same machine as the others)."""
    rows: dict[tuple[str, str], list[Result]] = {}
    for r in results:
        rows.setdefault((r.variant, r.generator), []).append(r)
    if all(len(found) < 2 for found in rows.values()):
        return
    print("\nmedians over the rounds (each round's figure, then the median of them):")
    for (variant, generator), found in rows.items():
        cpu = [r.server_cpu_us for r in found]
        p99 = [r.latency_ms[1] for r in found]
        print(
            f"{variant:<19} {generator:<17} srv µs/req {statistics.median(cpu):5.0f} "
            f"({', '.join(f'{c:.0f}' for c in cpu)}; system "
            f"{', '.join(f'{r.server_system_us:.0f}' for r in found)}); P50 ms "
            f"{statistics.median(r.latency_ms[0] for r in found):.2f}; P99 ms "
            f"{statistics.median(p99):.2f} ({', '.join(f'{p:.2f}' for p in p99)}); P99.9 ms "
            f"{statistics.median(r.latency_ms[2] for r in found):.2f}; degraded "
            f"{sum(r.degraded for r in found)}; syscalls/wake-ups per answer "
            f"{statistics.median(r.syscalls for r in found):.2f}/"
            f"{statistics.median(r.wakeups for r in found):.2f}; decisions per Redis write "
            f"{statistics.median(r.per_write for r in found):.2f}; rounds at 100 % of the rate "
            f"{sum(r.rate >= 0.99 * rate for r in found)}/{len(found)}"
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
        "--generator",
        default="split+lazy",
        help="comma-separated: split (two processes, evenly spaced sends, kernel receive "
        "stamps) or asyncio (the earlier in-process 1 ms-tick generator), each optionally "
        "with +"
        + ", +".join(f"{k} ({v})" for k, v in GENERATOR_OPTIONS.items())
        + "; e.g. split,split+pin,asyncio",
    )
    parser.add_argument(
        "--probe",
        action="store_true",
        help="time each request's stages inside the server (checkapi_probe), print them",
    )
    parser.add_argument("--rounds", type=int, default=1, help="variants alternate per round")
    parser.add_argument(
        "--before",
        default="",
        help=f"git revision whose gateway sources serve the variants named NAME{BEFORE} "
        f"(e.g. --before main --variants lean{BEFORE},lean: before and after in one run)",
    )
    parser.add_argument(
        "--serve",
        nargs=6,
        metavar=("PORT", "REDIS_URL", "VARIANT", "WINDOW_US", "PROBE", "REPORT_TO"),
        help=argparse.SUPPRESS,
    )
    args = parser.parse_args()
    if args.seconds * args.rate > 200_000:
        parser.error("bounded: at most 200,000 requests per variant")
    if args.serve:
        runner = __import__("uvloop").run if args.uvloop else asyncio.run
        port, url, variant, window, probe, report_to = args.serve
        runner(serve(int(port), url, variant, int(window), probe == "1", report_to))
        return
    variants = [v for v in args.variants.split(",") if v]
    if unknown := {base_variant(v)[0] for v in variants} - set(VARIANTS):
        parser.error(f"unknown variants: {sorted(unknown)}")
    if problem := before_sources(args, variants):
        parser.error(problem)
    generators = [g for g in args.generator.split(",") if g]
    for generator in generators:
        base, options = generator_parts(generator)
        if base not in ("split", "asyncio") or options - set(GENERATOR_OPTIONS):
            parser.error(f"unknown generator: {generator}")
        if base == "asyncio" and options - {"pin"}:
            parser.error(f"{generator}: the asyncio generator takes only +pin")
    runner = __import__("uvloop").run if args.uvloop else asyncio.run
    redis = RedisServer(port=free_port(), workdir=Path(tempfile.mkdtemp(prefix="urr-bench-")))
    redis.start()
    results: list[Result] = []
    try:
        for _ in range(args.rounds):
            for variant in variants:
                for generator in generators:
                    try:
                        result = run_variant(args, redis, variant, generator, runner)
                    except TimeoutError as exc:  # a server that did not start: the next one
                        print(f"{variant} ({generator}): not measured: {exc}", flush=True)
                        continue
                    results.append(result)
                    print(
                        f"measured {variant} ({generator}): srv µs/req {result.server_cpu_us:.0f}"
                        f" (system {result.server_system_us:.0f}),"
                        f" P50/P99 ms {result.latency_ms[0]:.2f}/{result.latency_ms[1]:.2f},"
                        f" {result.rate:.0f}/s, syscalls/wake-ups per answer"
                        f" {result.syscalls:.2f}/{result.wakeups:.2f}, decisions per Redis write"
                        f" {result.per_write:.2f}, load {result.load:.1f}",
                        flush=True,
                    )
    finally:
        redis.stop()
        shutil.rmtree(redis.workdir, ignore_errors=True)
    report(args, results)


def base_variant(variant: str) -> tuple[str, int | None]:
    """``lean-window:250@before`` -> (``lean-window``, 250): the variant without its window
    (``:N`` µs, instead of ``--window-us``) and without ``@before``."""
    name, _, window = variant.removesuffix(BEFORE).partition(":")
    return name, int(window) if window.isdigit() else None


def before_sources(args: argparse.Namespace, variants: list[str]) -> str | None:
    """Extract ``--before``'s gateway sources into ``args.before_src`` when a variant asks
    for them; what is wrong otherwise."""
    args.before_src = None
    if not any(v.endswith(BEFORE) for v in variants):
        return None
    if not args.before:
        return f"a variant ending in {BEFORE} needs --before REVISION"
    args.before_src = gateway_source(
        args.before, Path(tempfile.mkdtemp(prefix="urr-bench-")) / "src"
    )
    return None if args.before_src is not None else f"cannot extract {args.before}"


def run_variant(
    args: argparse.Namespace, redis: RedisServer, variant: str, generator: str, runner: Any
) -> Result:
    redis.flushall()
    port = free_port()
    base, window_us = base_variant(variant)
    argv = [sys.executable, __file__, "--serve", str(port), redis.url, base]
    report_to = Path(tempfile.mkdtemp(prefix="urr-bench-")) / "server.json"
    argv += [
        str(args.window_us if window_us is None else window_us),
        "1" if args.probe else "0",
        str(report_to),
    ]
    env = None
    if variant.endswith(BEFORE):  # the gateway package of --before, ahead of this tree's
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(args.before_src), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
    server = subprocess.Popen([*argv, *(["--uvloop"] if args.uvloop else [])], env=env)  # noqa: S603
    base, options = generator_parts(generator)
    pin = "pin" in options
    assert redis.process is not None
    redis_pid = redis.process.pid
    try:
        if pin:
            os.sched_setaffinity(server.pid, {1})
        wait_listening("127.0.0.1", port, 60, "check app")
        target = Target(port, server, redis_pid, variant)
        if base == "split":
            result = run_split(args, target, generator)
        else:
            # The in-process generator on uvloop too (with --uvloop): its own cost and
            # stalls are in every latency measured, so it should be the cheapest process.
            if pin:
                os.sched_setaffinity(0, {0})
            try:
                load = run_asyncio(args, target, generator)
                result = cast(Result, runner(load))
            finally:
                if pin:
                    os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    finally:
        server.terminate()
        server.wait(timeout=10)
    seen = orjson.loads(report_to.read_bytes())
    shutil.rmtree(report_to.parent, ignore_errors=True)
    result.degraded, result.collections = seen["degraded"], seen["gc"]
    result.own_p99_ms = seen["own_p99_ms"]
    result.syscalls, result.wakeups = target.per_answer
    result.per_write = seen["per_write"]
    result.server_system_us = target.system_us
    return result


if __name__ == "__main__":
    main()
