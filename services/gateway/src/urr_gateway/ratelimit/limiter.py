"""The limiter the gateway and the check API call: one decision per request.

Order of work for ``check``:

1. the deny cache: a subject already known to be over the limit is refused from memory;
2. Redis, unless the circuit breaker is open: one script evaluation, inside the time budget
   (by default written together with the other decisions of the same event-loop tick, one
   pipeline per Redis node: ``pipeline.py``);
3. otherwise the category's failure policy: ``open`` allows (marked degraded), ``local``
   asks the in-process sliding log.

The Redis client is owned by the application (which closes it); the limiter only borrows
it (the pipelined store keeps one of its connections per node checked out; ``aclose`` gives
them back). The budget, not the socket, cuts a slow call short: keep the client's socket
timeout above the budget (``RedisSettings`` defaults to 0.5 s), since redis-py retries a
command that hit its socket timeout and a retried script would count a request twice. With
the ``per_call`` transport redis-py drops a connection whose command was cancelled, so the
breaker is what keeps a hanging Redis from costing a reconnect per request; the pipelined
store reads and drops the late reply instead and keeps its connection.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable, Sequence
from contextvars import Context, copy_context
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast

from prometheus_client import CollectorRegistry
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from urr_common.logs import get_logger
from urr_gateway.ratelimit.breaker import BreakerState, CircuitBreaker
from urr_gateway.ratelimit.budget import RedisBudget
from urr_gateway.ratelimit.config import FailurePolicy, RateLimitSettings
from urr_gateway.ratelimit.deny_cache import DenyCache
from urr_gateway.ratelimit.keys import hash_tag
from urr_gateway.ratelimit.local import LocalSlidingLog
from urr_gateway.ratelimit.metrics import LatencyFold, RateLimitMetrics
from urr_gateway.ratelimit.pipeline import PipelinedSlidingLog
from urr_gateway.ratelimit.slots import InFlightSlots
from urr_gateway.ratelimit.store import (
    RedisSlidingLog,
    SlidingLogStore,
    TenantStore,
    parse_reply,
)
from urr_gateway.ratelimit.tenant import (
    CompiledPolicy,
    TenantDecision,
    closed_decision,
    degraded_tenant_decision,
    tenant_decision_of_reply,
    tenant_subject,
)
from urr_gateway.ratelimit.usage_tally import UsageTally, UsageWriter
from urr_gateway.ratelimit.window import (
    US_PER_MS,
    US_PER_S,
    Decision,
    WindowSpec,
    decide,
    one_window_decision,
    policy_names,
    unlimited_decision,
)

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

_LOG = get_logger(__name__)
_CLOSED = BreakerState.CLOSED

#: A Redis that keeps failing and recovering is logged at most this often.
OUTAGE_LOG_INTERVAL_S = 60.0


class OutageLogger(Protocol):
    """What the limiter logs with (a structlog logger; tests pass a recorder)."""

    def warning(self, event: str, **fields: Any) -> Any: ...

    def info(self, event: str, **fields: Any) -> Any: ...


class UnknownCategoryError(ValueError):
    """The category is not configured."""


def window_specs(settings: RateLimitSettings) -> dict[str, tuple[WindowSpec, ...]]:
    """Each category's windows with their header policy names."""
    specs: dict[str, tuple[WindowSpec, ...]] = {}
    for category, limits in settings.categories.items():
        names = policy_names(
            category,
            [window.window_s for window in limits.windows],
            [window.name for window in limits.windows],
        )
        specs[category] = tuple(
            WindowSpec(name, window.limit, window.window_s)
            for name, window in zip(names, limits.windows, strict=True)
        )
    return specs


def _pool_size(redis: Redis | RedisCluster) -> int | None:
    pool = getattr(redis, "connection_pool", None)
    size = getattr(pool, "max_connections", None)
    return size if isinstance(size, int) else None


#: What a failed Redis call of the limiter raises: the decision follows its failure policy.
_FAILURES = (TimeoutError, RedisTimeoutError, RedisConnectionError, OSError, RedisError, ValueError)


def _failure_kind(error: BaseException) -> str:
    """The ``kind`` label of a failure (checked in this order: a timeout is an OSError and
    a RedisError too, a connection error a RedisError)."""
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "timeout"
    if isinstance(error, RedisConnectionError | OSError):
        return "connection"
    return "other"


def _decision_of_reply(
    category: str,
    specs: tuple[WindowSpec, ...],
    cost: int,
    revoked_key: str | None,
    reply: Sequence[int],
) -> Decision:
    """The decision of a script reply (``parse_reply`` then ``decide``)."""
    if len(specs) == 1 and len(reply) == 5:
        # The common single window: ``decide_one``'s arithmetic on the reply's numbers (hiredis
        # hands RESP integers over as ints), the objects built by ``one_window_decision`` in
        # one call (a unit test holds this to ``parse_reply`` then ``decide``).
        spec = specs[0]
        limit = spec.limit
        count = reply[2]
        reset_us = reply[3]
        retry_us = reply[4]
        if retry_us == 0:
            remaining = limit - count - cost
            if remaining < 0:
                remaining = 0
            if not count:
                reset_us = spec.window_s * US_PER_S
            return one_window_decision(
                True,
                category,
                spec.policy,
                limit,
                spec.window_s,
                remaining,
                -(-reset_us // US_PER_MS) if reset_us > 0 else 0,
                0,
                False,
                "redis",
                bool(reply[1]) if revoked_key is not None else None,
            )
        remaining = limit - count
        return one_window_decision(
            False,
            category,
            spec.policy,
            limit,
            spec.window_s,
            remaining if remaining > 0 else 0,
            -(-reset_us // US_PER_MS) if reset_us > 0 else 0,
            -(-retry_us // US_PER_MS) if retry_us > 0 else 0,
            False,
            "redis",
            bool(reply[1]) if revoked_key is not None else None,
        )
    result = parse_reply(reply, len(specs), revoked_key is not None)
    return decide(category, specs, result.outcomes, cost, source="redis", revoked=result.revoked)


class _Soon:
    """One ``check_soon`` decision waiting for Redis: what its callbacks need, and ``check``'s
    steps after its ``await`` as those callbacks.

    It is its own reply's waiter (``resp.Waiter``): the pipelined store hands it the reply in
    the read that brings it (or the budget's failure in the timer that judges it), and it
    runs ``replied`` there, in a copy of the context ``check_soon`` was called in, as a
    future's done-callback would, without the future and the loop handle that callback costs
    per decision."""

    __slots__ = (
        "answer",
        "category",
        "context",
        "cost",
        "error",
        "limiter",
        "reply",
        "retried",
        "settled",
        "specs",
        "started",
        "subject",
    )

    def __init__(
        self,
        limiter: SlidingWindowLimiter,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        started: float,
        answer: Callable[[Decision | None, BaseException | None], None],
    ) -> None:
        self.limiter = limiter
        self.subject = subject
        self.category = category
        self.specs = specs
        self.cost = cost
        self.started = started
        #: ``check_soon``'s ``done``.
        self.answer = answer
        self.retried = False
        self.settled = False
        self.reply: Any = None
        self.error: BaseException | None = None
        self.context: Context | None = None

    # -- resp.Waiter -------------------------------------------------------------------------

    def done(self) -> bool:
        return self.settled

    def set_result(self, reply: Any, /) -> None:
        self.settled = True
        self.reply = reply
        # ``_run`` inlined: every answered decision comes here.
        context = self.context
        try:
            if context is None:
                self.replied(self)
            else:
                context.run(self.replied, self)
        except Exception as exc:  # the caller's callback failed: reported as the loop would
            asyncio.get_running_loop().call_exception_handler(
                {"message": "check_soon callback failed", "exception": exc}
            )

    def set_exception(self, error: BaseException, /) -> None:
        self.error = error
        self.set_result(None)  # ``replied`` reads the error through ``result``

    def result(self) -> Any:
        """The reply, or its failure raised (as ``Future.result``)."""
        if self.error is not None:
            raise self.error
        return self.reply

    # -- check's steps -----------------------------------------------------------------------

    def asked(self, task: asyncio.Future[Decision | None]) -> None:
        """After ``_ask_redis`` ran in a task (no free slot)."""
        try:
            decision = task.result()
        except BaseException as exc:  # handed to the caller's callback
            self.answer(None, exc)
            return
        self.finish(decision)

    def replied(self, pending: _Soon | asyncio.Future[Any]) -> None:
        """Once the reply is in (this object itself, or the future of a NOSCRIPT retry):
        ``check``'s steps after its ``await pending`` (NOSCRIPT retried once, the slot given
        back, failures counted)."""
        limiter = self.limiter
        decision: Decision | None = None
        error: BaseException | None = None
        try:
            decision = _decision_of_reply(
                self.category,
                self.specs,
                self.cost,
                None,
                # This object's own reply read in place (``result`` is a call more).
                self.reply if pending is self and self.error is None else pending.result(),
            )
        # A name per clause: compiled, one name keeps the first clause's type.
        except NoScriptError as noscript:
            retry = None
            if not self.retried and limiter._pipelined is not None:
                # As in ``check``: nothing ran; load the script first and run this once more,
                # still holding the slot (a future: a flushed script cache is rare).
                self.retried = True
                retry = limiter._pipelined.start(
                    self.subject, self.category, self.specs, self.cost, None, load_script=True
                )
            if retry is not None:
                retry.add_done_callback(self.replied)
                return
            error = noscript
        except _FAILURES as failed:
            error = failed
        except BaseException as cancelled:  # the caller hears of it
            limiter._in_flight.give_back()
            self.answer(None, cancelled)
            return
        limiter._in_flight.give_back()
        # ``_redis_answered`` then ``finish``, inlined (one decision per request comes here).
        try:
            if error is None:
                limiter._answered(self.subject, self.cost, decision)  # type: ignore[arg-type]
            else:
                limiter._on_failure(_failure_kind(error), error)
            final = limiter._conclude(
                self.subject, self.category, self.specs, self.cost, decision, self.started
            )
        except BaseException as crashed:  # handed to the caller's callback
            self.answer(None, crashed)
            return
        self.answer(final, None)

    def finish(self, decision: Decision | None) -> None:
        """The last step: ``_conclude``, handed to ``done`` (an error too)."""
        try:
            final = self.limiter._conclude(
                self.subject, self.category, self.specs, self.cost, decision, self.started
            )
        except BaseException as exc:  # handed to the caller's callback
            self.answer(None, exc)
            return
        self.answer(final, None)


class SlidingWindowLimiter:
    """Exact sliding-window limits in Redis, with a deny cache, a breaker and fallbacks."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        settings: RateLimitSettings,
        *,
        registry: CollectorRegistry | None = None,
        clock: Callable[[], float] = time.monotonic,
        logger: OutageLogger | None = None,
        store: SlidingLogStore | None = None,
    ) -> None:
        """``store``: the Redis side; by default the one ``settings.transport`` names."""
        self.settings = settings
        self._log: OutageLogger = logger if logger is not None else _LOG
        self._specs = window_specs(settings)
        self._max_cost = {name: min(s.limit for s in specs) for name, specs in self._specs.items()}
        self._policies: dict[str, FailurePolicy | Literal["closed"]] = {
            name: limits.failure_policy for name, limits in settings.categories.items()
        }
        self._settings_specs = dict(self._specs)
        self._settings_policies = dict(self._policies)
        #: Categories that are published policies in shadow mode (never refuse).
        self._shadow: frozenset[str] = frozenset()
        self._budget = RedisBudget(settings.budget_ms / 1000, settings.congestion_cap_ms / 1000)
        self._store: SlidingLogStore
        if store is not None:
            self._store = store
        elif settings.transport == "pipeline":
            self._store = PipelinedSlidingLog(
                redis,
                window_s=settings.pipeline_window_us / 1_000_000,
                soon_window_s=settings.check_pipeline_window_us / 1_000_000,
                # A connection that owes replies this long is replaced (see pipeline.py).
                stall_s=self._budget.cap_s,
                budget=self._budget,
                max_batch=settings.pipeline_max_batch,
            )
        else:
            self._store = RedisSlidingLog(redis)
        # Both built-in stores run tenant decisions too; a test's stand-in store may not.
        self._tenant_store: TenantStore | None = (
            cast("TenantStore", self._store) if hasattr(self._store, "tenant_reply") else None
        )
        # The pipelined store times its batches itself: one timer per batch, not per call.
        self._store_keeps_budget = getattr(self._store, "budget", None) is self._budget
        #: The pipelined store timing its own batches: ``check`` writes to it and awaits the
        #: reply's future itself (no ``_ask_redis``/``evaluate`` coroutines per decision).
        self._pipelined = (
            self._store
            if isinstance(self._store, PipelinedSlidingLog) and self._store_keeps_budget
            else None
        )
        self._clock = clock
        pool_size = _pool_size(redis) if isinstance(self._store, RedisSlidingLog) else None
        in_flight = min(settings.max_in_flight, pool_size or settings.max_in_flight)
        # Per call: no more calls in flight than the pool has connections; the rest queue
        # here. Pipelined: one connection per node, and a bound on what one batch carries.
        self._in_flight = InFlightSlots(in_flight)
        self._in_flight_limit = in_flight
        self._breaker = CircuitBreaker(settings.breaker_failures, settings.breaker_open_s)
        self._deny = DenyCache(settings.deny_cache_size)
        self._local = LocalSlidingLog(settings.local_max_subjects, clock)
        self._outage_since: float | None = None
        self._outage_logged = False
        self._last_outage_log = -OUTAGE_LOG_INTERVAL_S
        self._unlogged_outages = 0
        self.metrics = RateLimitMetrics.register(
            registry if registry is not None else CollectorRegistry()
        )
        self.metrics.breaker_state.set(int(BreakerState.CLOSED))
        #: Each decision's latency, by (category, allowed, source), until ``_fold`` adds them
        #: to ``urr_ratelimit_decisions`` and ``urr_ratelimit_decision_seconds`` (at every
        #: read of either: the same series and values as observing each decision).
        self._latencies: dict[tuple[str, bool, str], list[float]] = {}
        self._fold = LatencyFold()
        self._fold.watch(self.metrics.decisions, self.metrics.latency)
        self._fold_at = self._fold.fold_at
        #: ``check_soon``'s tasks (a decision waiting for a slot), held until done.
        self._tasks: set[asyncio.Future[Decision | None]] = set()
        #: Every decision's usage, counted until ``flush_usage`` writes it.
        self.usage = UsageTally()
        self._usage_writer = UsageWriter(redis)

    # -- what callers may ask about the configuration ------------------------------------

    @property
    def categories(self) -> tuple[str, ...]:
        return tuple(self._specs)

    def windows(self, category: str) -> tuple[WindowSpec, ...]:
        try:
            return self._specs[category]
        except KeyError:
            raise UnknownCategoryError(category) from None

    def max_cost(self, category: str) -> int:
        """The largest cost that can ever be admitted: the smallest limit of the category
        (``UnknownCategoryError`` when there is none: ``_max_cost`` has the same keys as
        ``_specs``, both set together)."""
        try:
            return self._max_cost[category]
        except KeyError:
            raise UnknownCategoryError(category) from None

    def use_policies(self, policies: tuple[CompiledPolicy, ...]) -> None:
        """Make these published (default) policies categories of their own, next to the
        configured ones: ``check(subject, policy.id)`` then follows the current limits. Called
        on every new published version; the deny cache is emptied, since a refusal it holds
        may be one the new limits would not make."""
        specs = dict(self._settings_specs)
        failure = dict(self._settings_policies)
        for compiled in policies:
            specs[compiled.id] = compiled.specs
            failure[compiled.id] = compiled.policy.failure
        self._specs = specs
        self._max_cost = {name: min(s.limit for s in found) for name, found in specs.items()}
        self._policies = failure
        self._shadow = frozenset(c.id for c in policies if not c.enforce)
        self._deny = DenyCache(self.settings.deny_cache_size)

    @property
    def breaker_state(self) -> BreakerState:
        return self._breaker.state

    @property
    def redis_unavailable(self) -> bool:
        """True from the moment the breaker opens until the next successful call."""
        return self._outage_since is not None

    async def prepare(self, timeout_s: float = 2.0) -> bool:
        """Load the script and open the connections ahead of the first requests (call it from
        the application's start-up), so that no decision of a first burst spends its budget on
        a connect and a SCRIPT LOAD. Never raises: a Redis that is down now is the breaker's
        business."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._store.load()
                # Concurrent round trips make the pool open one connection each.
                await asyncio.gather(*(self._store.ping() for _ in range(self._in_flight_limit)))
        except (TimeoutError, RedisError, OSError) as exc:
            self._log.warning("ratelimit_prepare_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    async def flush_usage(self) -> bool:
        """Add the tallied usage to Redis' usage hashes; on failure keep it for the next
        flush. Never raises."""
        counts = self.usage.drain()
        try:
            await self._usage_writer.write(counts)
        except (RedisError, OSError) as exc:
            self.usage.restore(counts)
            _LOG.debug("ratelimit_usage_flush_failed", error=f"{type(exc).__name__}: {exc}")
            return False
        return True

    async def aclose(self) -> None:
        """Give back what the store holds of the client (its pipelined connections)."""
        await self._store.aclose()

    # -- the decision -----------------------------------------------------------------------

    async def check(
        self,
        subject: str,
        category: str,
        *,
        cost: int = 1,
        revoked_key: str | None = None,
    ) -> Decision:
        """Decide whether ``subject`` may spend ``cost`` units of ``category`` now.

        ``revoked_key`` (same hash tag as ``subject``) is looked up in the same round trip and
        reported as ``Decision.revoked``.
        """
        started = time.perf_counter()
        specs = self._specs.get(category)
        if specs is None or cost != 1 or revoked_key is not None:
            # A cost of 1 always fits (every limit is at least 1): only the rest is checked.
            specs = self._checked_specs(subject, category, cost, revoked_key)
        now = self._clock()
        decision = self._deny.lookup(subject, category, cost, now)
        if decision is None and self._breaker.allow(now):
            pending = self._start_inline(subject, category, specs, cost, revoked_key)
            if pending is None:
                decision = await self._ask_redis(subject, category, specs, cost, revoked_key)
            else:
                error: BaseException | None = None
                try:
                    noscript = False
                    try:
                        reply = await pending
                    except NoScriptError:
                        noscript = True
                    # (Awaited outside the except clause: compiled, a coroutine waiting inside
                    # one leaves its exception set as the one being handled for every other
                    # callback of the loop.)
                    if noscript:
                        # Nothing ran; the next batch loads the script first and runs this
                        # once more (within a budget of its own: a flushed cache is rare).
                        retry = self._pipelined.start(  # type: ignore[union-attr]
                            subject, category, specs, cost, revoked_key, load_script=True
                        )
                        reply = await retry  # type: ignore[misc]
                    decision = _decision_of_reply(category, specs, cost, revoked_key, reply)
                except _FAILURES as exc:
                    error = exc
                finally:
                    self._in_flight.give_back()
                if error is None:
                    self._answered(subject, cost, decision)  # type: ignore[arg-type]
                else:
                    self._on_failure(_failure_kind(error), error)
        return self._conclude(subject, category, specs, cost, decision, started)

    def check_soon(
        self,
        subject: str,
        category: str,
        done: Callable[[Decision | None, BaseException | None], None],
        *,
        cost: int = 1,
        context: Context | None = None,
    ) -> None:
        """``check`` for a caller that answers from a callback (the check API's listener):
        the same steps, without a task and a coroutine per decision when a slot is free and
        the single node is known. ``done(decision, None)`` is called exactly once: in this
        call when Redis is not asked (deny cache, open breaker), else from the reply's
        callback; ``done(None, error)`` with an error ``check`` would raise from Redis's
        side (never a Redis failure: those follow the failure policy). Invalid arguments
        raise here, as ``check`` raises them.

        ``context``: the context this call runs in, when the caller made it for this request
        alone (the check listener runs each request in a ``copy_context()`` of its own):
        the reply's steps then run in it instead of in a copy made here, as a task's steps
        run in its one context. By default they run in a copy of the caller's context."""
        started = time.perf_counter()
        specs = self._specs.get(category)
        if specs is None or cost != 1:  # as in ``check``
            specs = self._checked_specs(subject, category, cost, None)
        now = self._clock()
        soon = _Soon(self, subject, category, specs, cost, started, done)
        decision = self._deny.lookup(subject, category, cost, now)
        if decision is None and self._breaker.allow(now):
            if not self._put_inline(soon, context):
                # No free slot, or a cluster: the coroutine path, in a task of its own.
                task = asyncio.ensure_future(self._ask_redis(subject, category, specs, cost, None))
                self._tasks.add(task)  # the loop keeps tasks only weakly
                task.add_done_callback(self._tasks.discard)
                task.add_done_callback(soon.asked)
            return
        soon.finish(decision)

    def _put_inline(self, soon: _Soon, context: Context | None = None) -> bool:
        """``_start_inline`` for ``check_soon``: ``soon`` itself waits for the reply (the
        slot then held until ``soon`` gives it back). False, with nothing asked and no slot
        held: ask through ``_ask_redis``. ``context``: the caller's own (see ``check_soon``)."""
        pipelined = self._pipelined
        if pipelined is None or not self._in_flight.take_now():
            return False
        if context is None:
            # The context the reply's steps run in, as a done-callback would have copied it.
            soon.context = copy_context()
        sent = False
        try:
            sent = pipelined.start_soon(
                soon.subject, soon.category, soon.specs, soon.cost, None, soon
            )
        finally:
            if not sent:
                self._in_flight.give_back()
        if context is not None and not soon.settled:
            # Only now: a waiter resolved inside ``start_soon`` (a closed store) ran its steps
            # right there, in this very context, which ``Context.run`` cannot enter twice.
            soon.context = context
        return sent

    def _start_inline(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None,
    ) -> asyncio.Future[Any] | None:
        """The common case, inline: a free slot, the single node known; the reply's future
        (the slot then held until the caller gives it back), or ``None``: ask through
        ``_ask_redis``. The same steps as ``_ask_redis`` with ``evaluate`` (slot, budgeted
        write, NOSCRIPT retry, failure kinds), without their two coroutines."""
        pipelined = self._pipelined
        if pipelined is None or not self._in_flight.take_now():
            return None
        pending = None
        try:
            pending = pipelined.start(subject, category, specs, cost, revoked_key)
        finally:
            if pending is None:
                self._in_flight.give_back()
        return pending

    def _conclude(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        decision: Decision | None,
        started: float,
    ) -> Decision:
        """The decision as returned: the failure policy's when Redis gave none, observed,
        its usage counted, a shadow policy's refusal turned into an admission."""
        if decision is None:
            decision = self._fallback(subject, category, specs, cost)
        self._observe(decision, started)
        shadow_refusal = not decision.allowed and category in self._shadow
        self.usage.record(decision, shadow_refusal=shadow_refusal)
        if shadow_refusal:
            # A shadow policy counts (in the decisions metric, as blocked) and never refuses.
            decision = dataclasses.replace(decision, allowed=True, retry_after_ms=0)
        return decision

    def _checked_specs(
        self, subject: str, category: str, cost: int, revoked_key: str | None
    ) -> tuple[WindowSpec, ...]:
        """The category's windows, once the arguments of ``check`` are known to be valid."""
        specs = self._specs.get(category)
        if specs is None:
            raise UnknownCategoryError(category)
        if not 1 <= cost <= self._max_cost[category]:
            raise ValueError(f"cost must be between 1 and {self._max_cost[category]}")
        if revoked_key is not None and hash_tag(revoked_key) != subject:
            raise ValueError("revoked_key must carry the subject's hash tag")
        return specs

    async def check_tenant(
        self,
        tenant: str,
        compiled: CompiledPolicy,
        *,
        cost: int = 1,
        quota: int = 0,
    ) -> TenantDecision:
        """Decide a tenant's request under its governing policy and monthly quota (0: none)
        in one script evaluation: windows, quota, shadow mode, near-limit; its usage is
        tallied here and written by ``flush_usage``.

        No deny cache here: a refusal names the quota left and whether only a shadow policy
        refused, which the script alone knows. Always on Redis's clock: the fixed clock of the
        tests is only reachable through the stores' ``evaluate_tenant``.
        """
        started = time.perf_counter()
        if not 1 <= cost <= compiled.max_cost:
            raise ValueError(f"cost must be between 1 and {compiled.max_cost}")
        store = self._tenant_store
        result: TenantDecision | None = None
        if store is not None and self._breaker.allow(self._clock()):
            slots = self._in_flight
            pipelined = self._pipelined
            pending = None
            try:
                if pipelined is not None and slots.take_now():
                    # As in ``check``: a free slot and the single node known, so the reply's
                    # future is awaited here, without ``tenant_reply``'s coroutine (the tenant
                    # decision's cost relative to a policy-less one is a target of issue 18).
                    try:
                        pending = pipelined.tenant_start(compiled, tenant, cost, quota)
                    finally:
                        if pending is None:
                            slots.give_back()
                if pending is None:
                    if not slots.take_now():  # no coroutine while a slot is free
                        await slots.take()
                    try:
                        call = store.tenant_reply(compiled, tenant, cost, quota)
                        reply = await (call if self._store_keeps_budget else self._budget.run(call))
                    finally:
                        slots.give_back()
                else:
                    try:
                        noscript = False
                        try:
                            reply = await pending
                        except NoScriptError:
                            noscript = True
                        if noscript:  # (awaited outside the except clause, as in ``check``)
                            retry = pipelined.tenant_start(  # type: ignore[union-attr]
                                compiled, tenant, cost, quota, load_script=True
                            )
                            reply = await retry  # type: ignore[misc]
                    finally:
                        slots.give_back()
                result = tenant_decision_of_reply(compiled, tenant, reply, cost)
            except _FAILURES as exc:
                self._on_failure(_failure_kind(exc), exc)
            else:
                self._on_success()
        if result is None:
            decision = self._fallback(
                tenant_subject(tenant), compiled.id, compiled.specs, cost, compiled.policy.failure
            )
            result = degraded_tenant_decision(compiled, tenant, decision)
        self._observe(result.decision, started)
        allowed = result.decision.allowed
        self.usage.count(
            tenant,
            compiled.id,
            allowed=allowed,
            would_allow=allowed and not result.shadow,
            near=result.near_limit,
        )
        return result

    async def _ask_redis(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None,
    ) -> Decision | None:
        slots = self._in_flight
        try:
            # Queueing for a slot is local congestion, not Redis being slow: the budget
            # starts once the call can go out.
            if not slots.take_now():
                await slots.take()
            try:
                call = self._store.evaluate(subject, category, specs, cost, revoked_key)
                if self._store_keeps_budget:
                    result = await call
                else:
                    result = await self._budget.run(call)
            finally:
                slots.give_back()
        except _FAILURES as exc:
            self._on_failure(_failure_kind(exc), exc)
            return None
        decision = decide(
            category, specs, result.outcomes, cost, source="redis", revoked=result.revoked
        )
        self._answered(subject, cost, decision)
        return decision

    def _answered(self, subject: str, cost: int, decision: Decision) -> None:
        """Redis answered with ``decision``: the breaker hears of it, and the deny cache
        remembers a refusal."""
        breaker = self._breaker
        # ``_on_success`` has nothing to do while all is well: not even called then.
        if breaker.failures or self._outage_since is not None or breaker.state is not _CLOSED:
            self._on_success()
        if not decision.allowed:
            self._deny.remember(subject, cost, decision, self._clock())
            self.metrics.deny_cache_entries.set(len(self._deny))

    @property
    def key_exists(self) -> Callable[[str], Awaitable[int]] | None:
        """``EXISTS key`` on the limiter's own pipelined connection (``None`` with another
        transport): other lookups of the same request (the entry token's revocation) cost a
        command in the tick's write instead of a redis-py call."""
        store = self._store
        return store.exists if isinstance(store, PipelinedSlidingLog) else None

    def _fallback(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        policy: FailurePolicy | Literal["closed"] | None = None,
    ) -> Decision:
        policy = policy if policy is not None else self._policies[category]
        self.metrics.degraded.labels(category, policy).inc()
        if policy == "local":
            return self._local.check(subject, category, specs, cost)
        if policy == "closed":
            return closed_decision(category, specs, int(self.settings.breaker_open_s * 1000))
        return unlimited_decision(category, specs, "open")

    # -- outage bookkeeping -----------------------------------------------------------------

    def _on_success(self) -> None:
        if self._breaker.state is not BreakerState.CLOSED or self._breaker.failures:
            self._breaker.record_success()
            self.metrics.breaker_state.set(int(BreakerState.CLOSED))
        if self._outage_since is not None:
            if self._outage_logged:
                self._log.info(
                    "ratelimit_redis_recovered",
                    outage_s=round(self._clock() - self._outage_since, 3),
                )
            self._outage_since = None

    def _on_failure(self, kind: str, error: BaseException) -> None:
        now = self._clock()
        self.metrics.redis_errors.labels(kind).inc()
        self._breaker.record_failure(now)
        self.metrics.breaker_state.set(int(self._breaker.state))
        if self._outage_since is not None or self._breaker.state is BreakerState.CLOSED:
            # A stray failure (a GC pause, one slow reply) is counted, not an outage.
            return
        # The breaker just opened: an outage starts. Logged once; and when Redis flaps, at
        # most once per OUTAGE_LOG_INTERVAL_S, with the count of outages not logged since.
        self._outage_since = now
        self.metrics.outages.inc()
        self._unlogged_outages += 1
        self._outage_logged = now - self._last_outage_log >= OUTAGE_LOG_INTERVAL_S
        if self._outage_logged:
            self._log.warning(
                "ratelimit_redis_unavailable",
                kind=kind,
                error=f"{type(error).__name__}: {error}"[:200],
                budget_ms=self.settings.budget_ms,
                consecutive_failures=self._breaker.failures,
                outages_since_last_log=self._unlogged_outages,
                policies=dict(self._policies),
            )
            self._last_outage_log = now
            self._unlogged_outages = 0

    def _observe(self, decision: Decision, started: float) -> None:
        """Count ``decision`` and its latency: one append, folded into the metrics when they
        are read (``LatencyFold``)."""
        latencies = self._latencies.get((decision.category, decision.allowed, decision.source))
        if latencies is None:
            latencies = self._latencies_of(decision)
        latencies.append(time.perf_counter() - started)
        if len(latencies) >= self._fold_at:
            self._fold.fold()

    def _latencies_of(self, decision: Decision) -> list[float]:
        """The pending latencies of ``decision``'s labels (the children looked up once:
        ``labels()`` costs more than an append)."""
        result = "allowed" if decision.allowed else "blocked"
        metrics = self.metrics
        latencies = self._fold.series(
            metrics.latency.labels(decision.source),
            metrics.decisions.labels(decision.category, result, decision.source),
        )
        self._latencies[(decision.category, decision.allowed, decision.source)] = latencies
        return latencies
