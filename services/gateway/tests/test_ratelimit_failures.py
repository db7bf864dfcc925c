"""The limiter when Redis is down, hanging or frozen: failure policies, the time budget, the
circuit breaker, recovery, one log line per outage and the metrics that count it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from urr_devstack.procs import RedisServer, free_port
from urr_gateway.ratelimit import BreakerState, RateLimitSettings, SlidingWindowLimiter
from urr_gateway.ratelimit.store import ScriptResult
from urr_gateway.ratelimit.window import WindowOutcome

pytestmark = pytest.mark.integration

#: Fast breaker timings so recovery tests take a fraction of a second; a budget with room for
#: a loaded test machine where the test is about the policy rather than the budget.
FAST: dict[str, Any] = {"breaker_failures": 3, "breaker_open_s": 0.3, "budget_ms": 250}


@dataclass
class RecordingLogger:
    lines: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append(("warning", event, fields))

    def info(self, event: str, **fields: Any) -> None:
        self.lines.append(("info", event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


def client(url: str) -> Redis:
    # Socket timeouts well above the budget: the budget, not the socket, must cut calls short.
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


def state_of(limiter: SlidingWindowLimiter) -> BreakerState:
    """Read through a call, so mypy does not narrow the property across awaits."""
    return limiter.breaker_state


def in_outage(limiter: SlidingWindowLimiter) -> bool:
    return limiter.redis_unavailable


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


async def test_redis_stopped_open_categories_allow_and_auth_limits_locally(
    redis_url: str, restart_redis: RedisServer
) -> None:
    registry = CollectorRegistry()
    log = RecordingLogger()
    redis = client(redis_url)
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(**FAST), registry=registry, logger=log)
    try:
        assert await limiter.prepare()
        assert (await limiter.check("u:1", "auth")).source == "redis"
        restart_redis.stop()

        general = [await limiter.check("u:1", "general") for _ in range(150)]
        assert all(d.allowed and d.degraded and d.source == "open" for d in general)

        # AUTH keeps its limit in process: 20 (one already spent in Redis is not known here).
        auth = [await limiter.check("u:1", "auth") for _ in range(21)]
        assert [d.allowed for d in auth] == [True] * 20 + [False]
        assert all(d.degraded and d.source == "local" for d in auth)
        assert 59_000 < auth[20].retry_after_ms <= 60_000

        assert state_of(limiter) is BreakerState.OPEN
        assert in_outage(limiter)
        assert (
            sample(
                registry,
                "urr_ratelimit_degraded_decisions_total",
                category="general",
                policy="open",
            )
            == 150
        )
        assert (
            sample(
                registry, "urr_ratelimit_degraded_decisions_total", category="auth", policy="local"
            )
            == 21
        )
        assert sample(registry, "urr_ratelimit_redis_outages_total") == 1
        assert sample(registry, "urr_ratelimit_breaker_state") == int(BreakerState.OPEN)
        errors = sum(
            sample(registry, "urr_ratelimit_redis_errors_total", kind=kind)
            for kind in ("timeout", "connection", "other")
        )
        # The breaker opened after 3 failures: the other 168 decisions never tried Redis.
        assert errors == 3
        assert log.events() == ["ratelimit_redis_unavailable"]

        restart_redis.start()
        await asyncio.sleep(FAST["breaker_open_s"])
        recovered = await limiter.check("u:1", "general")
        assert (recovered.source, recovered.degraded) == ("redis", False)
        assert state_of(limiter) is BreakerState.CLOSED
        assert not in_outage(limiter)
        assert log.events() == ["ratelimit_redis_unavailable", "ratelimit_redis_recovered"]
        assert sample(registry, "urr_ratelimit_breaker_state") == int(BreakerState.CLOSED)
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def silent_server() -> AsyncIterator[tuple[int, list[int]]]:
    """A TCP server that accepts connections and never answers (a hung Redis)."""
    accepted: list[int] = []
    writers: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writers.append(writer)
        with contextlib.suppress(ConnectionError):
            while await reader.read(4096):
                pass

    port = free_port()
    server = await asyncio.start_server(swallow, "127.0.0.1", port)
    try:
        yield port, accepted
    finally:
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_redis_that_never_answers_costs_the_budget_then_nothing() -> None:
    registry = CollectorRegistry()
    log = RecordingLogger()
    async with silent_server() as (port, accepted):
        redis = client(f"redis://127.0.0.1:{port}/0")
        # The default 10 ms budget: this test is about the budget.
        limiter = SlidingWindowLimiter(
            redis,
            RateLimitSettings(breaker_failures=3, breaker_open_s=0.3),
            registry=registry,
            logger=log,
        )
        try:
            assert not await limiter.prepare(timeout_s=0.05)
            timings = []
            for _ in range(3):
                started = time.perf_counter()
                decision = await limiter.check("ip:10.0.0.9", "queue")
                timings.append(time.perf_counter() - started)
                assert (decision.allowed, decision.source) == (True, "open")
            # Each waited about the 10 ms budget, nowhere near the 5 s socket timeout.
            assert all(t < 0.5 for t in timings)
            assert sample(registry, "urr_ratelimit_redis_errors_total", kind="timeout") == 3
            assert state_of(limiter) is BreakerState.OPEN
            connections = len(accepted)
            assert 1 <= connections <= 4

            # Open breaker: no Redis call, no new connection, no waiting.
            started = time.perf_counter()
            for _ in range(200):
                assert (await limiter.check("ip:10.0.0.9", "queue")).source == "open"
            assert time.perf_counter() - started < 0.5
            # AUTH keeps limiting in process meanwhile.
            auth = [await limiter.check("ip:10.0.0.9", "auth") for _ in range(21)]
            assert [d.allowed for d in auth] == [True] * 20 + [False]
            assert {d.source for d in auth} == {"local"}
            assert len(accepted) == connections

            # After the open interval one probe tries (and fails) again: one more connection.
            await asyncio.sleep(FAST["breaker_open_s"])
            await asyncio.gather(*(limiter.check("ip:10.0.0.9", "queue") for _ in range(20)))
            # The pipelined store drops the connection that owes replies and opens a new one
            # in the background: wait for it to be accepted, then check it is the only one.
            for _ in range(100):
                if len(accepted) > connections:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)
            assert len(accepted) == connections + 1
            assert sample(registry, "urr_ratelimit_redis_errors_total", kind="timeout") == 4
            assert log.events() == ["ratelimit_prepare_failed", "ratelimit_redis_unavailable"]
        finally:
            await redis.aclose()


async def test_frozen_redis_then_recovery(redis_url: str, restart_redis: RedisServer) -> None:
    """SIGSTOP the private server (connections stay open, nothing answers), then SIGCONT."""
    log = RecordingLogger()
    redis = client(redis_url)
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(**FAST), logger=log)
    assert restart_redis.process is not None
    pid = restart_redis.process.pid
    try:
        assert await limiter.prepare()
        for _ in range(3):
            assert (await limiter.check("u:3", "auth")).source == "redis"
        os.kill(pid, signal.SIGSTOP)
        frozen = [await limiter.check("u:3", "auth") for _ in range(30)]
        assert [d.allowed for d in frozen] == [True] * 20 + [False] * 10
        assert all(d.source == "local" for d in frozen)
        assert state_of(limiter) is BreakerState.OPEN

        os.kill(pid, signal.SIGCONT)
        await asyncio.sleep(FAST["breaker_open_s"])
        back = await limiter.check("u:3", "auth")
        # Redis still holds the 3 made before the freeze and is authoritative again. The calls
        # that timed out during the freeze had already been written to their sockets, and a
        # thawed Redis may still run them: they count (errs towards limiting, never beyond
        # the 3 that failed before the breaker opened).
        assert (back.source, back.allowed) == ("redis", True)
        assert 13 <= back.remaining <= 16
        assert state_of(limiter) is BreakerState.CLOSED
        assert log.events() == ["ratelimit_redis_unavailable", "ratelimit_redis_recovered"]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await redis.aclose()


async def test_a_failed_probe_keeps_the_breaker_open(
    redis_url: str, restart_redis: RedisServer
) -> None:
    registry = CollectorRegistry()
    redis = client(redis_url)
    limiter = SlidingWindowLimiter(redis, RateLimitSettings(**FAST), registry=registry)
    try:
        restart_redis.stop()
        for _ in range(3):
            await limiter.check("u:4", "general")
        assert state_of(limiter) is BreakerState.OPEN
        await asyncio.sleep(FAST["breaker_open_s"])
        await limiter.check("u:4", "general")  # the probe, still failing
        assert state_of(limiter) is BreakerState.OPEN
        assert sample(registry, "urr_ratelimit_redis_outages_total") == 1
    finally:
        await redis.aclose()


class FlakyStore:
    """Stands in for the Redis script call: fails while ``failing`` is set."""

    def __init__(self) -> None:
        self.failing = False

    async def load(self) -> None:
        return None

    async def evaluate(self, *args: Any, **kwargs: Any) -> ScriptResult:
        if self.failing:
            raise RedisConnectionError("down")
        return ScriptResult((WindowOutcome(0, 0, 0),), None)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_stray_failures_and_flapping_do_not_flood_the_log(redis_url: str) -> None:
    """Single failures are counted, not logged; a flapping Redis is logged once a minute."""
    registry = CollectorRegistry()
    log = RecordingLogger()
    clock = FakeClock()
    redis = client(redis_url)
    limiter = SlidingWindowLimiter(
        redis, RateLimitSettings(**FAST), registry=registry, logger=log, clock=clock
    )
    store = FlakyStore()
    limiter._store = store  # type: ignore[assignment]
    try:
        for _ in range(50):  # one failure, one success, over and over
            store.failing = True
            await limiter.check("u:1", "general")
            store.failing = False
            await limiter.check("u:1", "general")
        assert sample(registry, "urr_ratelimit_redis_errors_total", kind="connection") == 50
        assert log.events() == []
        for _ in range(5):  # five short outages within a minute: one warning, one recovery
            store.failing = True
            for _ in range(3):
                await limiter.check("u:1", "general")
            clock.now += FAST["breaker_open_s"] + 0.01
            store.failing = False
            await limiter.check("u:1", "general")
            clock.now += 1
        assert log.events() == ["ratelimit_redis_unavailable", "ratelimit_redis_recovered"]
        assert sample(registry, "urr_ratelimit_redis_outages_total") == 5
        clock.now += 60  # a minute later the next outage is logged again, with the count
        store.failing = True
        for _ in range(3):
            await limiter.check("u:1", "general")
        assert log.events()[-1] == "ratelimit_redis_unavailable"
        assert log.lines[-1][2]["outages_since_last_log"] == 5
    finally:
        await redis.aclose()
