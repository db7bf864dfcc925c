"""The auto-pipelined limiter against a real Redis: a tick's decisions go out as one write,
each still its own exact script evaluation; NOSCRIPT, a Redis killed mid-batch, an exceeded
budget and cancelled callers are handled per decision."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import ValidationError
from redis.asyncio import Redis

from urr_common.settings import SettingsError, load_settings
from urr_devstack.procs import RedisServer, free_port
from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter, window_key
from urr_gateway.ratelimit.budget import BatchDeadline, RedisBudget
from urr_gateway.ratelimit.finetimer import AVAILABLE as FINE_TIMERS
from urr_gateway.ratelimit.finetimer import FineTimer
from urr_gateway.ratelimit.pipeline import PipelinedSlidingLog
from urr_gateway.settings import GatewaySettings

pytestmark = pytest.mark.integration


@dataclass
class CountingProxy:
    """A TCP relay in front of Redis that counts what the client wrote, chunk by chunk."""

    port: int = 0
    chunks: int = 0
    connections: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@contextlib.asynccontextmanager
async def counting_proxy(target_port: int) -> AsyncIterator[CountingProxy]:
    proxy = CountingProxy(port=free_port())
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, count: bool) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if count:
                    proxy.chunks += 1
                writer.write(data)
                await writer.drain()
        writer.close()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        proxy.connections += 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target_port)
        proxy.writers += [writer, up_writer]
        for task in (
            asyncio.create_task(pump(reader, up_writer, True)),
            asyncio.create_task(pump(up_reader, writer, False)),
        ):
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(accept, "127.0.0.1", proxy.port)
    try:
        yield proxy
    finally:
        server.close()
        for writer in proxy.writers:
            writer.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


def settings(**overrides: Any) -> RateLimitSettings:
    # Room for a loaded test machine where the test is about exactness, not the budget.
    values: dict[str, Any] = {"budget_ms": 2000, "congestion_cap_ms": 5000}
    values.update(overrides)
    return RateLimitSettings(**values)


async def command_calls(redis: Redis, name: str) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get(f"cmdstat_{name}", {}).get("calls", 0))


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


async def burst(limiter: SlidingWindowLimiter, subject: str, category: str, n: int) -> list[Any]:
    return list(await asyncio.gather(*(limiter.check(subject, category) for _ in range(n))))


def by_callback(limiter: SlidingWindowLimiter, subject: str, category: str) -> asyncio.Future[Any]:
    """``check_soon`` (the check API's path: a callback, no task) as a future; a second call
    of its callback for one decision fails the test (``calls``)."""
    future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    calls: list[object] = []

    def done(decision: Any, error: BaseException | None) -> None:
        calls.append(decision)
        assert len(calls) == 1, "check_soon called back twice"
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(decision)

    limiter.check_soon(subject, category, done)
    return future


#: How a decision is asked: ``check`` in a task each, or ``check_soon``.
ASK = {
    "check": lambda limiter, subject, category: asyncio.ensure_future(
        limiter.check(subject, category)
    ),
    "check_soon": by_callback,
}


@pytest.mark.parametrize(("max_batch", "most_writes"), [(10_000, 5), (16, 15)])
async def test_a_burst_of_200_is_exact_and_goes_out_in_a_few_writes(
    redis: Redis, redis_server: RedisServer, max_batch: int, most_writes: int
) -> None:
    """Whole ticks (a batch size no tick reaches) or batches of 16 written mid-tick (the
    default): exact either way, and a handful of writes, not 200."""
    async with counting_proxy(redis_server.port) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=5)
        limiter = SlidingWindowLimiter(
            client, settings(max_in_flight=256, pipeline_max_batch=max_batch)
        )
        try:
            assert await limiter.prepare()
            store = limiter._store
            assert isinstance(store, PipelinedSlidingLog)
            (node,) = store.nodes
            writes, commands = node.writes, node.commands
            chunks, evals = proxy.chunks, await command_calls(redis, "evalsha")
            decisions = await burst(limiter, "u:burst", "booking", 200)
            assert sum(d.allowed for d in decisions) == 10
            assert {d.source for d in decisions} == {"redis"}
            assert await redis.zcard(window_key("u:burst", "booking", 60)) == 10
            # Every decision was its own script evaluation...
            assert await command_calls(redis, "evalsha") - evals == 200
            assert node.commands - commands == 200
            # ...and they reached Redis in a handful of writes, not 200.
            assert node.writes - writes <= most_writes
            assert proxy.chunks - chunks <= most_writes
            if max_batch == 16:
                assert node.writes - writes >= 200 // 16
        finally:
            await limiter.aclose()
            await client.aclose()


async def test_the_per_call_transport_writes_once_per_decision(
    redis: Redis, redis_server: RedisServer
) -> None:
    """The same burst on the old path, through the same counting relay: what batching saves."""
    async with counting_proxy(redis_server.port) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=5, max_connections=64)
        limiter = SlidingWindowLimiter(client, settings(transport="per_call"))
        try:
            assert await limiter.prepare()
            chunks = proxy.chunks
            decisions = await burst(limiter, "u:old", "booking", 200)
            assert sum(d.allowed for d in decisions) == 10
            assert proxy.chunks - chunks >= 100
        finally:
            await client.aclose()


async def test_decisions_of_a_window_are_batched_with_a_gathering_window(redis: Redis) -> None:
    """``pipeline_window_us``: decisions issued up to 500 µs apart share a write."""
    limiter = SlidingWindowLimiter(
        redis, settings(pipeline_window_us=500, pipeline_max_batch=10_000)
    )
    try:
        assert await limiter.prepare()
        store = limiter._store
        assert isinstance(store, PipelinedSlidingLog)
        (node,) = store.nodes
        writes = node.writes
        decisions = await asyncio.gather(
            *(limiter.check(f"ip:10.9.0.{n}", "general") for n in range(50))
        )
        assert all(d.allowed and d.source == "redis" for d in decisions)
        assert node.writes - writes <= 2
    finally:
        await limiter.aclose()


class FakeClock:
    """The gathering window's clock, moved by the test: gaps between decisions that do not
    depend on how fast the machine runs the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def windowed_limiter(
    client: Redis, clock: FakeClock, *, hold: bool = True, **overrides: Any
) -> tuple[SlidingWindowLimiter, Any]:
    """A limiter with a 500 µs gathering window on ``clock`` (or the settings ``overrides``
    name), prepared; and its one node. ``hold``: the window's timer pushed out of the way
    (when what is tested is the arrivals' rule: a batch is then written by a decision,
    never by the timer)."""
    values: dict[str, Any] = {"pipeline_window_us": 500, "pipeline_max_batch": 10_000}
    limiter = SlidingWindowLimiter(client, settings(**{**values, **overrides}))
    store = limiter._store
    assert isinstance(store, PipelinedSlidingLog)
    store._clock = clock
    assert await limiter.prepare()
    (node,) = store.nodes
    if hold:
        node._hold_s = 60.0
    return limiter, node


async def spaced(
    limiter: SlidingWindowLimiter,
    clock: FakeClock,
    subjects: list[str],
    gap_s: float,
    category: str,
) -> list[Any]:
    """One decision per loop pass, ``gap_s`` apart on ``clock`` (evenly spaced arrivals, as
    the check API's callers send them, not one tick's burst)."""
    tasks = []
    for subject in subjects:
        clock.now += gap_s
        tasks.append(asyncio.create_task(limiter.check(subject, category)))
        await asyncio.sleep(0)  # the task runs up to its write; the next one is a pass later
    return list(await asyncio.gather(*tasks))


async def test_evenly_spaced_decisions_within_the_window_share_one_write(
    redis: Redis, redis_server: RedisServer
) -> None:
    """Decisions 90 µs apart, each in its own loop pass, with a 500 µs window: the first
    (after a quiet spell) goes at once, the next six reach Redis in ONE write on the real
    connection (counted by the relay), each still its own script evaluation."""
    clock = FakeClock()
    async with counting_proxy(redis_server.port) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=5)
        limiter, node = await windowed_limiter(client, clock)
        try:
            writes, chunks = node.writes, proxy.chunks
            evals = await command_calls(redis, "evalsha")
            clock.now += 1.0  # a quiet second: the first decision is not held
            first = asyncio.create_task(limiter.check("ip:10.7.0.0", "general"))
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            assert node.writes - writes == 1  # written at the end of its own tick
            decisions = await spaced(
                limiter, clock, [f"ip:10.7.0.{n}" for n in range(1, 7)], 0.00009, "general"
            )
            decisions.append(await first)
            assert all(d.allowed and d.source == "redis" for d in decisions)
            # Up to 360 µs after the batch opened, a next decision 90 µs later would still
            # fit in the 500 µs window; at 450 µs it would not: written with that tick.
            assert node.writes - writes == 2
            assert proxy.chunks - chunks == 2
            assert await command_calls(redis, "evalsha") - evals == 7
        finally:
            await limiter.aclose()
            await client.aclose()


async def test_decisions_further_apart_than_the_window_are_not_held(redis: Redis) -> None:
    """A low rate pays nothing for the window: a decision 600 µs after the previous one is
    written with its own tick (one write each), never left to the timer."""
    clock = FakeClock()
    limiter, node = await windowed_limiter(redis, clock)
    try:
        writes = node.writes
        decisions = await spaced(
            limiter, clock, [f"ip:10.7.1.{n}" for n in range(5)], 0.0006, "general"
        )
        assert all(d.allowed and d.source == "redis" for d in decisions)
        assert node.writes - writes == 5
        assert node._flush_handle is None
    finally:
        await limiter.aclose()


async def test_a_held_window_stays_exact_for_one_subject(redis: Redis) -> None:
    """30 decisions of one subject 45 µs apart (twelve per held batch, the last batch left
    to the window's timer) against a limit of 10: exactly 10 allowed, 10 entries in Redis:
    gathering changes the writes, not what each atomic evaluation decides."""
    clock = FakeClock()
    limiter, node = await windowed_limiter(redis, clock, hold=False)
    try:
        writes = node.writes
        decisions = await spaced(limiter, clock, ["u:spaced"] * 30, 0.000045, "booking")
        assert sum(d.allowed for d in decisions) == 10
        assert {d.source for d in decisions} <= {"redis", "deny_cache"}
        assert await redis.zcard(window_key("u:spaced", "booking", 60)) == 10
        assert node.writes - writes < 30
    finally:
        await limiter.aclose()


@pytest.mark.interpreted  # patches a compiled class
async def test_the_window_wait_is_spent_from_the_budget(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A held batch's deadline gets the budget less the time the window held it (at most
    the window's timer), so a decision's wait in the window counts against its budget."""
    seen: list[float] = []
    watch = BatchDeadline.watch

    def watched(self: BatchDeadline, futures: Any, *, held_s: float = 0.0) -> None:
        seen.append(held_s)
        watch(self, futures, held_s=held_s)

    monkeypatch.setattr(BatchDeadline, "watch", watched)
    clock = FakeClock()
    limiter, _ = await windowed_limiter(redis, clock)
    try:
        clock.now += 1.0
        await limiter.check("ip:10.7.2.0", "general")  # not held: nothing spent
        await spaced(limiter, clock, [f"ip:10.7.2.{n}" for n in range(1, 7)], 0.00009, "general")
        # The first, alone; then a batch held from its first decision to its sixth.
        assert seen == [0.0, pytest.approx(0.00045)]
    finally:
        await limiter.aclose()


def test_held_time_past_the_budget_fails_the_batch_at_its_first_judgement() -> None:
    """``BatchDeadline.watch(held_s=...)``: a batch held as long as its budget has none
    left; a reply that has not come fails at once, not a budget later."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        BatchDeadline(RedisBudget(600.0, 600.0), lambda: False).watch([future], held_s=600.0)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(future, 30)

    asyncio.run(scenario())


@pytest.mark.parametrize("ask", list(ASK))
async def test_noscript_after_script_flush_reloads_and_counts_once(redis: Redis, ask: str) -> None:
    limiter = SlidingWindowLimiter(redis, settings())
    try:
        assert await limiter.prepare()
        assert (await limiter.check("u:ns", "general")).source == "redis"
        await redis.script_flush()
        loads = await command_calls(redis, "script|load")
        decisions = await asyncio.gather(
            *(ASK[ask](limiter, f"u:ns{n}", "general") for n in range(30))
        )
        assert all(d.allowed and d.source == "redis" and not d.degraded for d in decisions)
        # One SCRIPT LOAD per refused write (30 decisions: a batch of 16 and one of 14), not
        # per decision; then each decision ran exactly once.
        assert 1 <= await command_calls(redis, "script|load") - loads <= 2
        for n in range(30):
            assert await redis.zcard(window_key(f"u:ns{n}", "general", 60)) == 1
        assert limiter.breaker_state.name == "CLOSED"
    finally:
        await limiter.aclose()


@pytest.mark.parametrize("ask", list(ASK))
async def test_a_noscript_retry_leaves_no_exception_handled_for_other_callbacks(
    redis: Redis, ask: str
) -> None:
    """The suite runs the mypyc build: a compiled coroutine waiting inside an ``except``
    clause (the NOSCRIPT retry did) leaves its exception set as the one being handled for
    every other callback of the loop, so an exception raised anywhere meanwhile chains it as
    its ``__context__``. A probe in every loop pass must see none."""
    limiter = SlidingWindowLimiter(redis, settings())
    loop = asyncio.get_running_loop()
    seen: list[BaseException | None] = []
    probing = True

    def probe() -> None:
        seen.append(sys.exc_info()[1])
        if probing:
            loop.call_soon(probe)

    try:
        assert await limiter.prepare()
        await redis.script_flush()
        loop.call_soon(probe)
        decisions = await asyncio.gather(
            *(ASK[ask](limiter, f"u:handled{n}", "general") for n in range(8))
        )
        probing = False
        assert all(d.source == "redis" for d in decisions)
        assert len(seen) > 2
        assert [error for error in seen if error is not None] == []
    finally:
        probing = False
        await limiter.aclose()


@pytest.mark.parametrize("ask", list(ASK))
async def test_redis_killed_mid_batch_each_decision_follows_its_policy(
    redis_url: str, restart_redis: RedisServer, ask: str
) -> None:
    """Redis frozen with a batch written, then killed: the connection error reaches every
    waiting decision, and each follows its own category's failure policy."""
    registry = CollectorRegistry()
    client = Redis.from_url(redis_url, socket_timeout=5)
    limiter = SlidingWindowLimiter(
        client, settings(breaker_failures=1000, max_in_flight=256), registry=registry
    )
    assert restart_redis.process is not None
    pid = restart_redis.process.pid
    try:
        assert await limiter.prepare()
        os.kill(pid, signal.SIGSTOP)
        auth = [ASK[ask](limiter, "ip:10.7.0.1", "auth") for _ in range(30)]
        general = [ASK[ask](limiter, "ip:10.7.0.1", "general") for _ in range(30)]
        await asyncio.sleep(0.1)  # the batch is written and waits for its replies
        assert not any(task.done() for task in auth + general)
        os.kill(pid, signal.SIGKILL)
        auth_decisions = await asyncio.gather(*auth)
        general_decisions = await asyncio.gather(*general)
        # AUTH (local): limited in process, 20 of 30; GENERAL (open): all allowed, degraded.
        assert {d.source for d in auth_decisions} == {"local"}
        assert sum(d.allowed for d in auth_decisions) == 20
        assert {(d.source, d.allowed) for d in general_decisions} == {("open", True)}
        assert (
            registry.get_sample_value("urr_ratelimit_redis_errors_total", {"kind": "connection"})
            == 60
        )
    finally:
        await limiter.aclose()
        await client.aclose()


async def test_budget_exceeded_then_the_connection_is_kept(
    redis_url: str, redis: Redis, restart_redis: RedisServer
) -> None:
    """Redis frozen past the budget: each waiting decision gives up at its budget and follows
    its policy; the late replies are read and dropped, and the same connection serves on."""
    limiter = SlidingWindowLimiter(
        redis, settings(budget_ms=30, breaker_failures=1000, congestion_cap_ms=5000)
    )
    assert restart_redis.process is not None
    pid = restart_redis.process.pid
    try:
        assert await limiter.prepare()
        connections = (await redis.info("stats"))["total_connections_received"]
        os.kill(pid, signal.SIGSTOP)
        started = time.perf_counter()
        decisions = await burst(limiter, "ip:10.8.0.1", "general", 20)
        elapsed = time.perf_counter() - started
        os.kill(pid, signal.SIGCONT)
        assert {(d.source, d.allowed) for d in decisions} == {("open", True)}
        assert elapsed < 1.0  # the 30 ms budget (extended while the loop ran late), not 5 s
        # The frozen Redis ran the written scripts once thawed (errs towards limiting).
        back = await limiter.check("ip:10.8.0.1", "general")
        assert (back.source, back.allowed) == ("redis", True)
        assert back.remaining == 100 - 20 - 1
        stats = await redis.info("stats")
        assert stats["total_connections_received"] == connections
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await limiter.aclose()


async def test_a_caller_cancelled_before_the_write_is_left_out(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings())
    try:
        assert await limiter.prepare()
        evals = await command_calls(redis, "evalsha")
        gone = asyncio.create_task(limiter.check("u:gone", "general"))
        kept = asyncio.create_task(limiter.check("u:kept", "general"))
        # Both tasks run up to their submit in this pass; the batch is written in the next.
        await asyncio.sleep(0)
        gone.cancel()
        decision = await kept
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert (decision.source, decision.allowed) == ("redis", True)
        assert await redis.zcard(window_key("u:gone", "general", 60)) == 0
        assert await command_calls(redis, "evalsha") - evals == 1
    finally:
        await limiter.aclose()


async def test_a_caller_cancelled_after_the_write_leaves_the_connection_in_step(
    redis: Redis,
) -> None:
    limiter = SlidingWindowLimiter(redis, settings())
    try:
        assert await limiter.prepare()
        tasks = [asyncio.create_task(limiter.check(f"u:c{n}", "general")) for n in range(10)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # written now; cancel half of them while replies are owed
        for task in tasks[::2]:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # Replies are matched in order: the next decisions get their own answers.
        for n in range(5):
            decision = await limiter.check(f"u:after{n}", "queue")
            assert (decision.source, decision.limit, decision.remaining) == ("redis", 60, 59)
    finally:
        await limiter.aclose()


async def test_closing_the_client_closes_the_lean_connection(redis_url: str) -> None:
    client = Redis.from_url(redis_url, socket_timeout=5)
    limiter = SlidingWindowLimiter(client, settings(breaker_failures=1000))
    assert await limiter.prepare()
    await client.aclose()
    # The client's pool closed the connection the store borrowed; nothing hangs or leaks.
    decision = await limiter.check("u:closed", "general")
    assert decision.source in {"redis", "open"}
    await limiter.aclose()
    assert (await limiter.check("u:closed", "general")).source == "open"


def test_pipeline_settings_are_validated() -> None:
    assert RateLimitSettings().transport == "pipeline"
    assert RateLimitSettings().pipeline_window_us == 0
    assert RateLimitSettings().check_pipeline_window_us == 250
    assert RateLimitSettings(check_pipeline_window_us=0).check_pipeline_window_us == 0
    assert RateLimitSettings(pipeline_window_us=500).pipeline_window_us == 500
    assert RateLimitSettings().pipeline_max_batch == 16
    for bad in (0, -1, 10_001):
        with pytest.raises(ValidationError, match="pipeline_max_batch"):
            RateLimitSettings(pipeline_max_batch=bad)
    with pytest.raises(ValueError, match="at least one"):
        PipelinedSlidingLog(Redis(), max_batch=0)
    for name, bad in itertools.product(
        ("pipeline_window_us", "check_pipeline_window_us"), (-1, 501, 10_000)
    ):
        # Named, with its bounds and unit and what was given.
        with pytest.raises(ValidationError, match=name) as refused:
            RateLimitSettings(**{name: bad})
        assert (
            f"between 0 (the decisions of one event-loop tick, no added wait) and 500 µs; got {bad}"
            in str(refused.value)
        )
    with pytest.raises(ValidationError, match="pipeline_window_us"):
        RateLimitSettings(pipeline_window_us="a while")
    with pytest.raises(ValidationError, match="transport"):
        RateLimitSettings(transport="carrier-pigeon")
    with pytest.raises(ValueError, match="500"):
        PipelinedSlidingLog(Redis(), window_s=0.001)
    with pytest.raises(ValueError, match="500"):
        PipelinedSlidingLog(Redis(), soon_window_s=-0.0001)


def test_pipeline_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_RATE_LIMIT__PIPELINE_WINDOW_US", "200")
    monkeypatch.setenv("URR_RATE_LIMIT__TRANSPORT", "per_call")
    monkeypatch.setenv("URR_RATE_LIMIT__PIPELINE_MAX_BATCH", "64")
    loaded = load_settings(GatewaySettings)
    assert loaded.rate_limit.pipeline_max_batch == 64
    assert loaded.rate_limit.pipeline_window_us == 200
    monkeypatch.setenv("URR_RATE_LIMIT__CHECK_PIPELINE_WINDOW_US", "100")
    assert load_settings(GatewaySettings).rate_limit.check_pipeline_window_us == 100
    assert loaded.rate_limit.transport == "per_call"
    monkeypatch.setenv("URR_RATE_LIMIT__PIPELINE_WINDOW_US", "900")
    with pytest.raises(SettingsError, match="URR_RATE_LIMIT__PIPELINE_WINDOW_US") as refused:
        load_settings(GatewaySettings)
    assert "and 500 µs; got 900" in str(refused.value)


def test_the_lean_connection_works_on_uvloop(redis_server: RedisServer) -> None:
    """The gateway runs on uvloop, whose transports are not asyncio's classes: the borrowed
    socket must work there too (burst exactness and NOSCRIPT recovery)."""
    import uvloop

    async def scenario() -> None:
        client = Redis.from_url(redis_server.url, socket_timeout=5)
        limiter = SlidingWindowLimiter(client, settings())
        try:
            assert await limiter.prepare()
            decisions = await burst(limiter, "u:uvloop", "booking", 200)
            assert sum(d.allowed for d in decisions) == 10
            assert {d.source for d in decisions} == {"redis"}
            await client.script_flush()
            again = await burst(limiter, "u:uvloop-2", "booking", 20)
            assert sum(d.allowed for d in again) == 10
            assert {d.source for d in again} == {"redis"}
        finally:
            await client.delete(
                window_key("u:uvloop", "booking", 60), window_key("u:uvloop-2", "booking", 60)
            )
            await limiter.aclose()
            await client.aclose()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


async def test_key_lookups_ride_the_pipelined_connection(
    redis: Redis, redis_server: RedisServer
) -> None:
    """``key_exists`` (the entry token's revocation fallback) sends ``EXISTS`` in the same
    writes as the tick's decisions, on the lean connection, not through redis-py."""
    async with counting_proxy(redis_server.port) as proxy:
        client = Redis.from_url(proxy.url, socket_timeout=5)
        limiter = SlidingWindowLimiter(client, settings(max_in_flight=256))
        try:
            assert await limiter.prepare()
            exists = limiter.key_exists
            assert exists is not None
            await redis.set("revoked:{u:k1}:j1", b"1", px=60_000)
            chunks, lookups = proxy.chunks, await command_calls(redis, "exists")
            results = await asyncio.gather(
                *(limiter.check("u:k1", "booking") for _ in range(50)),
                *(exists("revoked:{u:k1}:j1") for _ in range(50)),
                *(exists("revoked:{u:k1}:other") for _ in range(50)),
            )
            assert results[50:] == [1] * 50 + [0] * 50
            assert await command_calls(redis, "exists") - lookups == 100
            assert proxy.chunks - chunks <= 12  # 150 commands in batches of 16, not 150
        finally:
            await limiter.aclose()
            await client.aclose()
    per_call = SlidingWindowLimiter(redis, settings(transport="per_call"))
    assert per_call.key_exists is None


# -- the window's timer: a held batch is written once its window has passed, not 1 ms later --


def _on_both_loops(scenario: Any) -> None:
    """Run ``scenario()`` on asyncio's loop and on uvloop's (the workers' loop)."""
    import uvloop

    asyncio.run(scenario())
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())


def test_the_window_timer_fires_once_after_its_delay_and_never_when_cancelled() -> None:
    """``FineTimer``: not before its delay (the kernel's timer), once per arming; a cancel
    before it fires, or after it expired but before the loop read it, calls nothing; arming
    again moves the deadline; closed, the loop lets go of it."""
    assert FINE_TIMERS  # the CI and the workers run on Linux

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        fired: list[float] = []
        wake = asyncio.Event()

        def fire() -> None:
            fired.append(time.monotonic())
            wake.set()

        timer = FineTimer.create(loop, fire)
        assert timer is not None
        try:
            for delay in (0.0001, 0.00025, 0.0005):
                fired.clear()
                armed_at = time.monotonic()
                timer.arm(delay)
                await asyncio.wait_for(wake.wait(), 5)
                wake.clear()
                await asyncio.sleep(0.002)
                assert len(fired) == 1
                assert fired[0] - armed_at >= delay
            fired.clear()
            timer.arm(0.0002)
            timer.cancel()
            await asyncio.sleep(0.005)
            timer.arm(0.00001)
            time.sleep(0.001)  # noqa: ASYNC251 - expired, and the loop has not read it yet
            timer.cancel()
            await asyncio.sleep(0.005)
            assert fired == []
            wake.clear()
            timer.arm(0.0002)
            moved_at = time.monotonic()
            timer.arm(0.003)  # moved: not at 200 µs
            await asyncio.sleep(0.001)
            await asyncio.wait_for(wake.wait(), 5)
            # Once, and not before the moved deadline (a loaded host may oversleep the 1 ms
            # above past it: the fire's time, not its absence, says the deadline moved).
            await asyncio.sleep(0.002)
            assert len(fired) == 1
            assert fired[0] - moved_at >= 0.003
        finally:
            timer.close()
        timer.close()  # twice is harmless

    _on_both_loops(scenario)


def test_a_lone_held_decision_is_written_once_its_window_has_passed(
    redis_server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound a window promises, attacked with decisions that are held and then have no
    follower: each one is written by the window's timer armed for the window itself (250
    µs, not the loop's 1 ms), after at least that long and with nothing else sent, and is
    answered by Redis; on both loops."""
    armed: list[float] = []
    arm = FineTimer.arm

    def recorded(self: FineTimer, delay_s: float) -> None:
        armed.append(delay_s)
        arm(self, delay_s)

    monkeypatch.setattr(FineTimer, "arm", recorded)

    async def scenario() -> None:
        client = Redis.from_url(redis_server.url, socket_timeout=5)
        clock = FakeClock()
        limiter, node = await windowed_limiter(client, clock, hold=False, pipeline_window_us=250)
        try:
            armed.clear()
            for n in range(5):
                clock.now += 1.0
                await limiter.check(f"ip:10.7.3.{n}", "general")  # after a quiet spell: sent
                clock.now += 0.0001  # the next 100 µs later: held for its window
                writes, held_at = node.writes, time.monotonic()
                decision = await limiter.check(f"ip:10.7.4.{n}", "general")
                assert decision.source == "redis"
                assert decision.allowed
                assert node.writes - writes == 1
                # Held: written by the timer, no sooner than the window (the kernel's timer).
                assert time.monotonic() - held_at >= 0.00025
            assert armed == [0.00025] * 5
        finally:
            await limiter.aclose()
            await client.aclose()

    _on_both_loops(scenario)


async def test_without_a_fine_timer_the_window_falls_back_to_the_loops(
    redis: Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where the loop cannot watch a ``timerfd`` (another platform), a held batch is written
    by the loop's own timer, the window rounded up to its millisecond, and still decided."""
    monkeypatch.setattr(FineTimer, "create", classmethod(lambda cls, loop, callback: None))
    clock = FakeClock()
    limiter, node = await windowed_limiter(redis, clock, hold=False)
    try:
        clock.now += 1.0
        await limiter.check("ip:10.7.5.0", "general")
        clock.now += 0.0001
        writes = node.writes
        decision = await limiter.check("ip:10.7.5.1", "general")
        assert decision.source == "redis"
        assert node.writes - writes == 1
        assert node._hold_bound_s == 0.001  # the loop's timer: the window in whole ms
        assert node._timer is None
        assert node._timer_made
    finally:
        await limiter.aclose()


async def test_concurrent_callers_through_a_window_stay_exact(redis: Redis) -> None:
    """200 decisions of one subject (limit 10) and one each of 100 others, asked by both
    paths from 20 callers that each ask in their own loop passes on the real clock, through a
    500 µs window: exactly 10 of the hot subject's are allowed and recorded, every other
    subject's one decision is allowed, and fewer writes than decisions went out."""
    limiter = SlidingWindowLimiter(
        redis, settings(pipeline_window_us=500, max_in_flight=512, deny_cache_size=0)
    )
    store = limiter._store
    assert isinstance(store, PipelinedSlidingLog)
    try:
        assert await limiter.prepare()
        (node,) = store.nodes
        writes, commands = node.writes, node.commands

        async def caller(index: int) -> tuple[list[Any], list[Any]]:
            hot, others = [], []
            for n in range(10):
                ask = ASK["check_soon" if (index + n) % 2 else "check"]
                hot.append(ask(limiter, "u:windowed", "booking"))
                if n % 2:
                    others.append(ask(limiter, f"u:windowed-{index}-{n}", "booking"))
                await asyncio.sleep(0)
            return list(await asyncio.gather(*hot)), list(await asyncio.gather(*others))

        asked = await asyncio.gather(*(caller(i) for i in range(20)))
        hot = [d for ds, _ in asked for d in ds]
        others = [d for _, ds in asked for d in ds]
        assert (len(hot), len(others)) == (200, 100)
        assert sum(d.allowed for d in hot) == 10
        assert all(d.allowed for d in others)
        assert {d.source for d in hot + others} == {"redis"}
        assert await redis.zcard(window_key("u:windowed", "booking", 60)) == 10
        assert node.commands - commands == 300
        assert node.writes - writes < 300
    finally:
        await limiter.aclose()


async def test_check_api_decisions_wait_in_their_window_and_gateway_ones_do_not(
    redis: Redis,
) -> None:
    """Each path its own window: with the defaults (the gateway's 0, the check API's 250
    µs) a check-API decision (``check_soon``) close behind another is held for its window,
    a gateway decision (``check``) never is, and one arriving while a check-API batch is
    held sends that batch with its own tick; every decision still Redis's."""
    clock = FakeClock()
    # The default windows; only a decision may write a held batch here.
    limiter, node = await windowed_limiter(redis, clock, pipeline_window_us=0)
    try:
        assert RateLimitSettings().check_pipeline_window_us == 250
        clock.now += 1.0
        first = by_callback(limiter, "ip:10.7.6.0", "general")  # after a quiet spell: sent
        await first
        clock.now += 0.0001
        writes = node.writes
        held = by_callback(limiter, "ip:10.7.6.1", "general")
        await asyncio.sleep(0.01)
        assert not held.done()
        assert node._held
        assert node.writes == writes
        clock.now += 0.00001
        gateway = await limiter.check("ip:10.7.6.2", "general")  # sends the held one with it
        decided = await held
        assert node.writes - writes == 1
        assert gateway.source == decided.source == "redis"
        # Gateway decisions close behind each other: never held (their window is 0).
        for n in range(3, 8):
            clock.now += 0.00001
            await limiter.check(f"ip:10.7.6.{n}", "general")
            assert not node._held
        assert node.writes - writes == 6
    finally:
        await limiter.aclose()
