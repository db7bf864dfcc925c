"""A busy gateway is not a slow Redis: with a healthy Redis and an event loop lagging by
hundreds of milliseconds (this process overloaded), no decision may fail open and the
breaker stays closed. (Observed before the fix: 23,611 of 79,338 booking decisions of an
overloaded gateway were fail-open while Redis answered in microseconds.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_common.resp import encode_command
from urr_devstack.procs import RedisServer
from urr_gateway.ratelimit import BreakerState, RateLimitSettings, SlidingWindowLimiter
from urr_gateway.ratelimit.budget import BatchDeadline, RedisBudget
from urr_gateway.ratelimit.pipeline import PipelinedSlidingLog
from urr_gateway.ratelimit.window import Decision

pytestmark = pytest.mark.integration

#: Busy callbacks always queued, each holding the loop this long: a pass of the loop takes
#: HOGS x HOG_S = 400 ms, forty times the 10 ms budget and past the 250 ms congestion cap.
HOGS = 20
HOG_S = 0.020


def busy(seconds: float) -> None:
    """Hold the event loop (and the CPU) without yielding: an overloaded process."""
    spin_until = time.perf_counter() + seconds
    while time.perf_counter() < spin_until:
        pass


def start_hogs(loop: asyncio.AbstractEventLoop, until: float) -> None:
    """CPU-bound callbacks that re-queue themselves: the loop lags, Redis does not."""

    def hog() -> None:
        busy(HOG_S)
        if time.perf_counter() < until:
            loop.call_soon(hog)

    for _ in range(HOGS):
        loop.call_soon(hog)


async def overloaded_decisions(url: str, seconds: float, **overrides: Any) -> dict[str, Any]:
    """Booking (policy ``open``) and auth (policy ``local``) decisions from 64 callers while
    the loop is hogged; every decision, the breaker and the Redis error counter."""
    client = Redis.from_url(url, socket_timeout=5)
    registry = CollectorRegistry()
    # The production defaults (10 ms budget, 250 ms cap, breaker after 3 failures).
    limiter = SlidingWindowLimiter(client, RateLimitSettings(**overrides), registry=registry)
    decisions: list[Decision] = []
    breaker_states: set[BreakerState] = set()
    try:
        assert await limiter.prepare()
        loop = asyncio.get_running_loop()
        until = time.perf_counter() + seconds
        start_hogs(loop, until)
        counter = iter(range(1_000_000))

        async def caller(category: str) -> None:
            while time.perf_counter() < until:
                decisions.append(await limiter.check(f"u:hog{next(counter)}", category))
                breaker_states.add(limiter.breaker_state)

        await asyncio.gather(
            *(caller("booking") for _ in range(48)), *(caller("auth") for _ in range(16))
        )
        errors = registry.get_sample_value("urr_ratelimit_redis_errors_total", {"kind": "timeout"})
        connection = registry.get_sample_value(
            "urr_ratelimit_redis_errors_total", {"kind": "connection"}
        )
        return {
            "decisions": decisions,
            "breaker": breaker_states | {limiter.breaker_state},
            "errors": (errors or 0) + (connection or 0),
        }
    finally:
        await limiter.aclose()
        await client.flushall()
        await client.aclose()


def assert_nothing_failed_open(result: dict[str, Any]) -> None:
    decisions: list[Decision] = result["decisions"]
    assert len(decisions) >= 64
    sources: dict[str, int] = {}
    for decision in decisions:
        sources[decision.source] = sources.get(decision.source, 0) + 1
    # Every decision was Redis's: none failed open (booking), none fell back (auth).
    assert sources == {"redis": len(decisions)}
    assert all(d.allowed and not d.degraded for d in decisions)
    assert result["breaker"] == {BreakerState.CLOSED}
    assert result["errors"] == 0


async def test_an_overloaded_loop_with_a_healthy_redis_fails_nothing_open(
    redis_server: RedisServer,
) -> None:
    assert_nothing_failed_open(await overloaded_decisions(redis_server.url, 3.0))


def run_on_uvloop(scenario: Callable[[], Any]) -> Any:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(scenario())


def test_the_same_on_uvloop(redis_server: RedisServer) -> None:
    """The gateway runs on uvloop, whose loop polls sockets after timers and callbacks."""
    assert_nothing_failed_open(run_on_uvloop(lambda: overloaded_decisions(redis_server.url, 3.0)))


async def test_unread_tells_a_reply_the_loop_has_not_read_yet(redis_server: RedisServer) -> None:
    """``RespPipe.unread``: Redis answered while the loop was blocked (no poll ran), so the
    reply sits in the socket; once the loop reads it, nothing is unread."""
    client = Redis.from_url(redis_server.url, socket_timeout=5)
    store = PipelinedSlidingLog(client)
    try:
        await store.ping()  # opens the lean connection
        (node,) = store.nodes
        pipe = node._pipe
        assert pipe is not None
        assert not pipe.unread()
        reply = node.submit(encode_command(b"PING"))
        await asyncio.sleep(0)  # the flush: written
        assert not reply.done()
        busy(0.05)  # the loop is blocked; Redis answers meanwhile
        assert pipe.unread()
        assert await reply == b"PONG"
        assert not pipe.unread()
    finally:
        await store.aclose()
        await client.aclose()


async def test_a_batch_deadline_waits_while_replies_sit_unread_then_expires() -> None:
    """The judgement of :class:`BatchDeadline`: past the budget, a batch whose replies are in
    the socket (the loop is behind) is not failed; once nothing is unread and the reply has
    still not come, it fails with ``TimeoutError`` (a slow Redis)."""
    loop = asyncio.get_running_loop()
    budget = RedisBudget(0.01, 0.25)
    future: asyncio.Future[Any] = loop.create_future()
    unread = [True]
    BatchDeadline(budget, lambda: unread[0]).watch([future])
    await asyncio.sleep(0.1)  # ten budgets
    assert not future.done()
    assert budget.extensions >= 5
    unread[0] = False
    with pytest.raises(TimeoutError, match="10 ms"):
        await asyncio.wait_for(future, 1.0)
    answered: asyncio.Future[Any] = loop.create_future()
    BatchDeadline(budget, lambda: False).watch([answered])
    answered.set_result(b"ok")
    await asyncio.sleep(0.03)
    assert answered.result() == b"ok"


async def test_a_batch_deadline_goes_once_every_reply_is_in() -> None:
    """Replies in: the one timer of the connection fires once at the budget, finds every
    batch settled and is not re-armed (no wake-up after that while nothing is written); a
    last future cancelled by its caller while an earlier one still waits keeps the
    judgement, which then fails the one left."""
    loop = asyncio.get_running_loop()
    budget = RedisBudget(0.05, 0.25)
    first: asyncio.Future[Any] = loop.create_future()
    last: asyncio.Future[Any] = loop.create_future()
    answered = BatchDeadline(budget, lambda: False)
    answered.watch([first])
    answered.watch([last])
    assert answered.armed()
    first.set_result(b"a")
    last.set_result(b"b")
    await asyncio.sleep(0.2)
    assert not answered.armed()
    assert not answered._batches

    waiting: asyncio.Future[Any] = loop.create_future()
    gone: asyncio.Future[Any] = loop.create_future()
    kept = BatchDeadline(budget, lambda: False)
    kept.watch([waiting, gone])
    gone.cancel()
    await asyncio.sleep(0)
    assert kept.armed()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(waiting, 5)


async def test_batches_of_one_connection_are_each_judged_on_their_own_deadline() -> None:
    """One timer for many batches: a batch written later than a settled one still fails at
    its own deadline, and a batch written after an overdue one is judged in its turn."""
    loop = asyncio.get_running_loop()
    budget = RedisBudget(0.03, 0.25)
    deadlines = BatchDeadline(budget, lambda: False)
    settled: asyncio.Future[Any] = loop.create_future()
    deadlines.watch([settled])
    settled.set_result(b"ok")
    await asyncio.sleep(0.02)
    late: asyncio.Future[Any] = loop.create_future()
    deadlines.watch([late])  # due 20 ms after the first batch's deadline
    started = loop.time()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(late, 5)
    assert loop.time() - started >= 0.025  # its own budget, not the first batch's
    after: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(3)]
    for future in after:
        deadlines.watch([future])
    after[0].set_result(b"in")
    results = await asyncio.gather(*after, return_exceptions=True)
    assert results[0] == b"in"
    assert all(isinstance(r, TimeoutError) for r in results[1:])
    await asyncio.sleep(0.05)
    assert not deadlines.armed()


async def test_a_loop_busy_past_the_stall_limit_keeps_the_connection(
    redis_server: RedisServer,
) -> None:
    """The stall guard (a connection owing replies for ``stall_s`` is replaced) must not
    take a loop that was too busy to read for a silent Redis: two writes 300 ms apart with
    no poll between (one long pass of an overloaded loop) keep the connection and both
    replies."""
    client = Redis.from_url(redis_server.url, socket_timeout=5)
    store = PipelinedSlidingLog(client, stall_s=0.25, max_batch=1)  # each submit writes
    try:
        await store.ping()
        (node,) = store.nodes
        first = node.submit(encode_command(b"PING"))
        busy(0.3)  # the loop is busy; Redis has answered
        second = node.submit(encode_command(b"PING"))
        assert list(await asyncio.gather(first, second)) == [b"PONG", b"PONG"]
        assert node.writes >= 2
    finally:
        await store.aclose()
        await client.aclose()
