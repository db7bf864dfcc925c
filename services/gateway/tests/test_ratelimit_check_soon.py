"""``SlidingWindowLimiter.check_soon``: ``check`` answered through a callback (the check
API's listener decides without a task per request). The same decisions as ``check``, exact
under concurrency, each callback called exactly once, and every failure path (NOSCRIPT, a
Redis killed mid-batch, a budget exceeded, no free slot, an open breaker) with ``check``'s
meaning, against a real Redis."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from redis.asyncio import Redis

from urr_devstack.procs import RedisServer
from urr_gateway.ratelimit import RateLimitSettings, SlidingWindowLimiter, window_key
from urr_gateway.ratelimit.limiter import UnknownCategoryError
from urr_gateway.ratelimit.window import Decision

pytestmark = pytest.mark.integration


def settings(**overrides: Any) -> RateLimitSettings:
    # Room for a loaded test machine where the test is about exactness, not the budget.
    values: dict[str, Any] = {"budget_ms": 2000, "congestion_cap_ms": 5000}
    values.update(overrides)
    return RateLimitSettings(**values)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5)
    try:
        yield client
    finally:
        await client.aclose()


class Calls:
    """The callbacks ``check_soon`` made, each checked to come once per decision asked."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, Decision | None, BaseException | None]] = []
        self._all = asyncio.get_running_loop().create_future()
        self.expected = 0

    def callback(self, index: int) -> Any:
        def done(decision: Decision | None, error: BaseException | None) -> None:
            self.seen.append((index, decision, error))
            if len(self.seen) >= self.expected and not self._all.done():
                self._all.set_result(None)

        return done

    async def all(self, n: int, timeout_s: float = 10.0) -> list[Decision]:
        self.expected = n
        if len(self.seen) < n:
            await asyncio.wait_for(asyncio.shield(self._all), timeout_s)
        await asyncio.sleep(0.05)  # a second call for any of them would show here
        assert sorted(index for index, _, _ in self.seen) == list(range(n))
        assert all(error is None for _, _, error in self.seen)
        return [decision for _, decision, _ in self.seen]  # type: ignore[misc]


async def soon(
    limiter: SlidingWindowLimiter, subject: str, category: str, n: int
) -> list[Decision]:
    calls = Calls()
    for index in range(n):
        limiter.check_soon(subject, category, calls.callback(index))
    return await calls.all(n)


async def test_a_burst_of_200_is_exact(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings(max_in_flight=256))
    try:
        assert await limiter.prepare()
        decisions = await soon(limiter, "u:soon", "booking", 200)
        assert sum(d.allowed for d in decisions) == 10
        assert await redis.zcard(window_key("u:soon", "booking", 60)) == 10
        # The first refusal went to the deny cache; later ones may come from it.
        assert {d.source for d in decisions} <= {"redis", "deny_cache"}
        assert limiter._in_flight.free == 256  # every slot given back
    finally:
        await limiter.aclose()


async def test_the_same_decisions_as_check(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings())
    try:
        assert await limiter.prepare()
        (by_callback,) = await soon(limiter, "u:same-a", "general", 1)
        by_check = await limiter.check("u:same-b", "general")
        assert by_callback == by_check
    finally:
        await limiter.aclose()


async def test_no_free_slot_goes_through_a_task_and_stays_exact(redis: Redis) -> None:
    """Two slots for 50 decisions: most wait for a slot (the coroutine path), all decided
    once, exactly, and every slot comes back."""
    limiter = SlidingWindowLimiter(redis, settings(max_in_flight=2))
    try:
        assert await limiter.prepare()
        decisions = await soon(limiter, "u:slots", "booking", 50)
        assert sum(d.allowed for d in decisions) == 10
        assert await redis.zcard(window_key("u:slots", "booking", 60)) == 10
        assert limiter._in_flight.free == 2
        assert not limiter._tasks
    finally:
        await limiter.aclose()


async def test_budget_exceeded_follows_the_policy_then_the_breaker_opens(
    redis: Redis, restart_redis: RedisServer
) -> None:
    """Redis frozen: each decision gives up at its budget (open policy), the breaker opens
    after its failures, and then decisions are answered at once, in the call itself."""
    registry = CollectorRegistry()
    limiter = SlidingWindowLimiter(
        redis,
        settings(budget_ms=30, congestion_cap_ms=5000, breaker_failures=3),
        registry=registry,
    )
    assert restart_redis.process is not None
    pid = restart_redis.process.pid
    try:
        assert await limiter.prepare()
        os.kill(pid, signal.SIGSTOP)
        decisions = await soon(limiter, "ip:10.9.0.2", "general", 5)
        assert {(d.source, d.allowed) for d in decisions} == {("open", True)}
        assert limiter.breaker_state.name == "OPEN"
        answered: list[Decision | None] = []
        limiter.check_soon("ip:10.9.0.2", "general", lambda d, _: answered.append(d))
        assert len(answered) == 1  # no Redis asked: answered before check_soon returned
        assert answered[0] is not None
        assert answered[0].source == "open"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
        await limiter.aclose()


async def test_invalid_arguments_raise_before_anything_is_asked(redis: Redis) -> None:
    limiter = SlidingWindowLimiter(redis, settings())
    called: list[Any] = []
    try:
        with pytest.raises(ValueError, match="cost must be between"):
            limiter.check_soon("u:bad", "general", lambda *a: called.append(a), cost=10_000)
        with pytest.raises(UnknownCategoryError):
            limiter.check_soon("u:bad", "no-such-category", lambda *a: called.append(a))
        await asyncio.sleep(0.05)
        assert called == []
        assert await redis.zcard(window_key("u:bad", "general", 60)) == 0
    finally:
        await limiter.aclose()


_REQUEST: contextvars.ContextVar[str] = contextvars.ContextVar("_REQUEST", default="none")


async def test_the_reply_step_runs_in_the_callers_context_without_a_future(
    redis: Redis,
) -> None:
    """The decision waits on Redis as its own waiter (no future, no loop handle): the reply's
    step runs in a copy of the context ``check_soon`` was called in, as a done-callback's
    would, and each caller sees its own."""
    limiter = SlidingWindowLimiter(redis, settings())
    seen: dict[str, str] = {}
    finished = asyncio.get_running_loop().create_future()

    def ask(name: str) -> None:
        _REQUEST.set(name)

        def done(decision: Decision | None, error: BaseException | None) -> None:
            assert decision is not None, error
            assert decision.source == "redis"
            seen[name] = _REQUEST.get()
            if len(seen) == 2:
                finished.set_result(None)

        limiter.check_soon(f"u:ctx-{name}", "general", done)

    try:
        assert await limiter.prepare()
        # Each in a context of its own, as the check listener runs a request.
        contextvars.copy_context().run(ask, "a")
        contextvars.copy_context().run(ask, "b")
        assert _REQUEST.get() == "none"
        store = limiter._pipelined
        assert store is not None
        node = store.nodes[0]
        assert all(type(waiter).__name__ == "_Soon" for _, waiter in node._batch)
        await asyncio.wait_for(finished, 10)
        assert seen == {"a": "a", "b": "b"}
        assert limiter._in_flight.free == limiter._in_flight_limit
    finally:
        await limiter.aclose()


async def test_a_failing_callback_is_reported_and_the_next_replies_still_come(
    redis: Redis,
) -> None:
    """A callback that raises runs inside the read of Redis's replies: it is reported to the
    loop's exception handler (as a failing done-callback is), and the other decisions of the
    same read are still answered, once each."""
    limiter = SlidingWindowLimiter(redis, settings())
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _, context: reported.append(context))

    def broken(decision: Decision | None, error: BaseException | None) -> None:
        raise RuntimeError("the caller's bug")

    try:
        assert await limiter.prepare()
        calls = Calls()
        limiter.check_soon("u:broken", "general", broken)
        for index in range(5):
            limiter.check_soon(f"u:after-{index}", "general", calls.callback(index))
        decisions = await calls.all(5)
        assert all(d.allowed and d.source == "redis" for d in decisions)
        assert [type(c.get("exception")) for c in reported] == [RuntimeError]
        assert limiter._in_flight.free == limiter._in_flight_limit
    finally:
        loop.set_exception_handler(previous)
        await limiter.aclose()


async def test_a_closed_store_answers_by_the_failure_policy_in_the_call(redis: Redis) -> None:
    """A store already closed fails the decision at once: its category's policy answers,
    inside ``check_soon``, and the slot comes back."""
    limiter = SlidingWindowLimiter(redis, settings())
    try:
        assert await limiter.prepare()
    finally:
        await limiter.aclose()
    answered: list[Decision | None] = []
    limiter.check_soon("u:closed", "general", lambda d, _: answered.append(d))
    assert len(answered) == 1
    assert answered[0] is not None
    assert (answered[0].source, answered[0].allowed) == ("open", True)
    assert limiter._in_flight.free == limiter._in_flight_limit


async def test_a_callers_own_context_is_the_one_the_reply_runs_in(redis: Redis) -> None:
    """``context=``: the reply's step runs in the caller's own context (what it set after
    ``check_soon`` returned is seen there, as in a task), also when a closed store answers
    inside the call (the context is entered then: no second ``run`` of it)."""
    limiter = SlidingWindowLimiter(redis, settings())
    seen: list[tuple[str, str]] = []
    finished = asyncio.get_running_loop().create_future()

    def ask(name: str, context: contextvars.Context) -> None:
        _REQUEST.set(name)

        def done(decision: Decision | None, error: BaseException | None) -> None:
            assert decision is not None, error
            seen.append((decision.source, _REQUEST.get()))
            if not finished.done():
                finished.set_result(None)

        limiter.check_soon(f"u:own-{name}", "general", done, context=context)
        _REQUEST.set(f"{name} after the call")

    try:
        assert await limiter.prepare()
        own = contextvars.copy_context()
        own.run(ask, "a", own)
        assert _REQUEST.get() == "none"
        await asyncio.wait_for(finished, 10)
        assert seen == [("redis", "a after the call")]
        assert limiter._in_flight.free == limiter._in_flight_limit
    finally:
        await limiter.aclose()
    seen.clear()
    closed = contextvars.copy_context()
    closed.run(ask, "b", closed)
    assert seen == [("open", "b")]
    assert limiter._in_flight.free == limiter._in_flight_limit


async def test_metrics_under_a_burst_are_what_each_decision_observed(redis: Redis) -> None:
    """Latencies are appended per decision and folded when read: after a burst through
    ``check`` and ``check_soon`` (more than ``FOLD_AT`` of one series, so some are folded on
    the way and the rest at the scrape) the counter and the histogram hold one count per
    decision, the buckets add up, and the sum is what the decisions took."""
    registry = CollectorRegistry()
    limiter = SlidingWindowLimiter(redis, settings(deny_cache_size=0), registry=registry)
    try:
        assert await limiter.prepare()
        first = [limiter.check(f"u:m{i % 30}", "general") for i in range(300)]
        decisions = list(await asyncio.gather(*first))
        decisions += await soon(limiter, "u:m-soon", "booking", 40)
    finally:
        await limiter.aclose()
    allowed_general = sum(d.allowed for d in decisions if d.category == "general")
    assert allowed_general == 300
    allowed_booking = sum(d.allowed for d in decisions if d.category == "booking")
    assert allowed_booking == 10

    def value(name: str, **labels: str) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    decided = "urr_ratelimit_decisions_total"
    assert value(decided, category="general", result="allowed", source="redis") == 300
    assert value(decided, category="booking", result="allowed", source="redis") == 10
    assert value(decided, category="booking", result="blocked", source="redis") == 30
    seconds = "urr_ratelimit_decision_seconds"
    assert value(f"{seconds}_count", source="redis") == 340
    assert value(f"{seconds}_bucket", source="redis", le="+Inf") == 340
    total = value(f"{seconds}_sum", source="redis")
    assert 0 < total < 340 * 10  # seconds: every decision took some time, none forever
    # Read again: nothing is folded twice.
    assert value(f"{seconds}_count", source="redis") == 340
    assert value(f"{seconds}_sum", source="redis") == total
