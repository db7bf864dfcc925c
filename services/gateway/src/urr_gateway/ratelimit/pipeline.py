"""The limiter's Redis side, auto-pipelined: a tick's decisions go out as one write per node.

Every decision is still its own ``EVALSHA`` of ``sliding_window.lua``: atomic, on Redis's
clock, exact. What changes is the client cost around it. Decisions issued in the same
event-loop tick (or within ``window_s``, at most 500 µs) are written together on one lean
connection per Redis node (:mod:`resp`), and their replies, which Redis sends back in order,
are parsed by hiredis in one pass. envoy's ratelimit service batches its Redis calls the same
way.

The time budget stays per decision, with one timer per connection instead of one per call: a
decision whose reply has not *arrived* within the budget of its batch's write fails with
``TimeoutError`` (``budget.BatchDeadline``: a reply sitting unread in the socket because the
loop is busy is the loop's delay, not Redis's, and fails nothing). Failures stay per
decision too. A connection that fails or closes fails every decision waiting on it, and each
follows its own category's failure policy in the limiter. ``NOSCRIPT`` (after a ``SCRIPT
FLUSH`` or a failover) sends ``SCRIPT LOAD`` ahead of the refused decisions in the next
batch and runs them once more (a refused ``EVALSHA`` ran nothing, so nothing is counted
twice). A caller cancelled before its batch is written is left out of it; one cancelled
after is read and dropped, so the connection stays usable. A connection that owes replies
and has sent none for ``stall_s`` (nothing unread in its socket either) is closed and
replaced, so a black-holed socket does not hold the limiter once Redis is reachable again.

Redis Cluster: each decision goes to the primary owning its subject's slot (all keys of a
decision carry the ``{subject}`` hash tag), one connection and one batch per node. A node
answering ``MOVED`` or ``ASK`` (the slot moved; the script did not run) sends that decision
through redis-py's cluster client once, which follows the redirection and refreshes its
slot map for the next ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, cast

from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisClusterException, RedisError

from urr_common.ratelimit_usage import USAGE_TTL_S, tenant_tag
from urr_common.resp import RedirectedError, RespPipe, Waiter, bulk, encode_command
from urr_gateway.ratelimit.budget import BatchDeadline, RedisBudget
from urr_gateway.ratelimit.config import PIPELINE_WINDOW_MAX_US
from urr_gateway.ratelimit.finetimer import FineTimer
from urr_gateway.ratelimit.keys import hash_tag
from urr_gateway.ratelimit.store import (
    TENANT_SCRIPT_NAME,
    CategoryCalls,
    RedisSlidingLog,
    ScriptResult,
    current_month,
    load_script_source,
    parse_reply,
    tenant_args,
    tenant_keys,
)
from urr_gateway.ratelimit.tenant import (
    CompiledPolicy,
    QuotaMonth,
    TenantScriptResult,
    parse_tenant_reply,
    tenant_subject,
)
from urr_gateway.ratelimit.window import WindowSpec

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection, Connection

#: Tenants whose encoded command parts are kept (cleared when full).
TENANT_PARTS_MAX = 10_000

#: Encoded decision commands kept per category (cleared when full).
COMMANDS_MAX = 10_000

#: Longest configurable gathering window (the issue's bound; envoy uses 150-500 µs).
MAX_WINDOW_S = PIPELINE_WINDOW_MAX_US / 1_000_000

#: Commands a batch carries before it is written without waiting for the tick's end. 32
#: callers each awaiting their decision measured 1.4x redis-py PING's 32-way rate with whole
#: ticks (client and Redis taking turns) and 2.1-2.3x with batches of 16 (the two overlap);
#: 8 and 24 were in between (docs/performance.md, issue 17).
DEFAULT_MAX_BATCH = 16

_PING = encode_command(b"PING")

Acquire = Callable[[], Awaitable["AbstractConnection"]]
Release = Callable[["AbstractConnection"], Awaitable[None]]


class _EncodedCall:
    """A category's command pieces, encoded once: everything but the keys and the cost."""

    __slots__ = ("commands", "heads", "suffixes", "tails", "windows")

    def __init__(self, sha: bytes, suffixes: tuple[str, ...], window_args: tuple[int, ...]):
        self.windows = len(suffixes)
        self.suffixes = tuple(suffix.encode() for suffix in suffixes)
        # [without, with] the revoked-jti key: array header, EVALSHA, sha, numkeys.
        self.heads: tuple[bytes, bytes] = tuple(  # type: ignore[assignment]
            b"*%d\r\n" % (3 + numkeys + 3 + len(window_args))
            + bulk(b"EVALSHA")
            + bulk(sha)
            + bulk(b"%d" % numkeys)
            for numkeys in (self.windows, self.windows + 1)
        )
        # ARGV after the cost: number of windows, the revoked flag, each window's arguments.
        windows_part = b"".join(bulk(b"%d" % value) for value in window_args)
        self.tails: tuple[bytes, bytes] = tuple(  # type: ignore[assignment]
            bulk(b"%d" % self.windows) + bulk(flag) + windows_part for flag in (b"0", b"1")
        )
        #: Whole commands of cost 1 by (subject, revoked key): the same caller comes back
        #: request after request with the same bytes to send (bounded: cleared when full).
        self.commands: dict[tuple[str, str | None], tuple[bytes, bytes]] = {}


class _TenantParts:
    """A tenant's encoded pieces under one published policy and month: its window keys,
    quota counter and hash tag, and its whole command for a cost of 1 at the quota it was
    last asked with (a quota changes only with a new published version, hence a new
    ``compiled``)."""

    __slots__ = ("command", "compiled", "counter", "keys", "month", "quota", "tag")

    def __init__(
        self, compiled: CompiledPolicy, month: QuotaMonth, keys: bytes, counter: bytes, tag: bytes
    ) -> None:
        self.compiled = compiled
        self.month = month
        self.keys = keys
        self.counter = counter
        self.tag = tag
        #: -1: no command kept yet (a quota is never negative).
        self.quota = -1
        self.command = b""


class _Node:
    """One Redis node: its connection and the batch being gathered for it."""

    def __init__(
        self,
        acquire: Acquire,
        release: Release,
        window_s: float,
        stall_s: float,
        load_command: bytes,
        budget: RedisBudget | None,
        max_batch: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._acquire = acquire
        self._clock = clock
        self._max_batch = max_batch
        self._budget = budget
        #: The futures the current batch's deadline watches.
        self._timed: list[Waiter] = []
        self._release = release
        self._window_s = window_s
        self._stall_s = stall_s
        self._load_command = load_command
        self._batch: list[tuple[bytes, Waiter]] = []
        #: ``SCRIPT LOAD`` commands the next write sends first (after a NOSCRIPT).
        self._load_first: list[bytes] = []
        self._pipe: RespPipe | None = None
        #: The budgets of the current connection's batches (one timer: ``BatchDeadline``).
        self._deadlines: BatchDeadline | None = None
        self._connection: AbstractConnection | None = None
        self._opening: asyncio.Task[None] | None = None
        #: What writes the batch being gathered: a loop handle, or the window's timer.
        self._flush_handle: asyncio.Handle | FineTimer | None = None
        #: The gathering window (``_gather``): when the batch opened, when its window closes
        #: and when the last decision came (``time.monotonic``; uvloop's ``loop.time`` moves
        #: in whole milliseconds), whether the batch waits on the timer, and the longest the
        #: timer holds it (the budget is spent by the wait, up to that).
        self._opened_at = 0.0
        self._closes_at = 0.0
        self._last_at = -1.0
        self._held = self._was_held = False
        self._hold_bound_s = 0.0
        #: The timer's delay when set (tests push the timer out of the way); else the window's
        #: own rest on a ``timerfd`` (``finetimer``), or rounded up to the loop's millisecond.
        self._hold_s: float | None = None
        #: The window's timer, made at the first held batch (``_timer_made``; still ``None``
        #: then: the loop has none, its own timer is used).
        self._timer: FineTimer | None = None
        self._timer_made = False
        self._closed = False
        #: The loop of the first submit (``asyncio.get_running_loop`` costs a ``getpid``
        #: system call per call on Python 3.11); the node's connection lives on it anyway.
        self._loop: asyncio.AbstractEventLoop | None = None
        #: Writes and commands sent, for tests and metrics.
        self.writes = 0
        self.commands = 0

    def submit(
        self,
        command: bytes,
        load_script: bool | bytes = False,
        timed: bool = False,
    ) -> asyncio.Future[Any]:
        """Queue ``command`` for the next write. ``load_script``: send a ``SCRIPT LOAD`` first
        (``True``: the sliding-window script's, bytes: that command). ``timed``: the reply must
        come within the budget (one timer per batch), else the future fails with
        ``TimeoutError``."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self.put(command, future, load_script, timed)  # positional: no keyword matching
        return future

    def put(
        self,
        command: bytes,
        waiter: Waiter,
        load_script: bool | bytes = False,
        timed: bool = False,
        window_s: float | None = None,
    ) -> None:
        """``submit`` with a waiter of the caller's (``resp.Waiter``): its reply, or its
        failure, is handed to it once. A waiter that is not a future is resolved in place:
        it runs inside the read of the reply, the timer's judgement or this call (a closed
        store). ``window_s``: how long this decision may wait for others (``None``: the
        node's window; 0: not at all, a held batch then goes with this tick)."""
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if self._closed:
            waiter.set_exception(RedisConnectionError("the limiter's store is closed"))
            return
        self._batch.append((command, waiter))
        if load_script:
            load = self._load_command if load_script is True else load_script
            if load not in self._load_first:
                self._load_first.append(load)
        window = self._window_s if window_s is None else window_s
        if window > 0:
            self._gather(loop, window)
        elif self._flush_handle is None:
            # After every callback already due in this pass: the whole tick's decisions.
            self._flush_handle = loop.call_soon(self._flush)
        elif self._held:
            # A decision that may not wait: the held batch goes with this tick's.
            self._flush_handle.cancel()
            self._flush_handle = loop.call_soon(self._flush)
            self._held = False
        if timed and self._budget is not None:
            self._timed.append(waiter)
        if len(self._batch) >= self._max_batch and self._pipe is not None:
            # Written now, mid-tick: Redis runs these while the rest of the tick is decided,
            # instead of the client and Redis taking turns (callers waiting on their
            # decisions otherwise move in lockstep: all decide, all wait, all decide).
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush()

    def _gather(self, loop: asyncio.AbstractEventLoop, window_s: float) -> None:
        """The gathering window: hold the batch while the next decision is expected inside
        it, write it with the tick of the last one that fits.

        Each decision measures the gap since the previous one, and the batch is written at
        the end of this tick when a next decision as far away would come after the window
        closes (always when decisions come further apart than the window: no wait at a low
        rate). A batch whose next decision does not come is written by a timer when its
        window has passed: a ``timerfd`` (``finetimer``), since the loop's own timers round
        to whole milliseconds (uvloop: 500 µs becomes 0, 600 µs 1 ms), so a decision is never
        held longer than its window, plus the loop's own lateness; where there is no
        ``timerfd``, the window rounded up to a millisecond. A decision with a shorter window
        than the batch's closes it sooner. The budget counts the wait."""
        now = self._clock()
        gap = now - self._last_at
        self._last_at = now
        handle = self._flush_handle
        if handle is None:
            self._opened_at = now
            if gap >= window_s:
                self._flush_handle = loop.call_soon(self._flush)
            else:
                self._closes_at = now + window_s
                self._flush_handle = self._hold_timer(loop, window_s)
                self._held = self._was_held = True
        elif self._held:
            if now + window_s < self._closes_at:  # this decision's own bound comes first
                self._closes_at = now + window_s
                handle.cancel()
                self._flush_handle = handle = self._hold_timer(loop, window_s)
            if now + gap >= self._closes_at:
                handle.cancel()
                self._flush_handle = loop.call_soon(self._flush)
                self._held = False

    def _hold_timer(
        self, loop: asyncio.AbstractEventLoop, delay_s: float
    ) -> asyncio.Handle | FineTimer:
        """Arm what writes a held batch ``delay_s`` from now: the ``timerfd`` timer (on
        time), or where the loop has none the loop's timer (whole milliseconds)."""
        timer = self._timer
        if timer is None and not self._timer_made:
            self._timer_made = True
            timer = self._timer = FineTimer.create(loop, self._flush)
        if self._hold_s is not None:
            delay_s = self._hold_s
        elif timer is None:
            delay_s = math.ceil(delay_s * 1000) / 1000
        self._hold_bound_s = self._clock() - self._opened_at + delay_s
        if timer is None:
            return loop.call_later(delay_s, self._flush)
        timer.arm(delay_s)
        return timer

    def _flush(self) -> None:
        self._flush_handle = None
        self._held = False
        # What the gathering window held this batch for, spent from its budget.
        held_s = min(self._clock() - self._opened_at, self._hold_bound_s) if self._was_held else 0.0
        self._was_held = False
        pipe = self._pipe
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        if pipe is not None and not pipe.closed:
            stalled = pipe.stalled_for(loop.time())
            # Replies waiting unread mean the loop, not Redis, is behind.
            if stalled > self._stall_s and not pipe.unread():
                pipe.abort(f"no reply from Redis for {stalled * 1000:.0f} ms")
        if pipe is None or pipe.closed:
            if self._opening is None and not self._closed:
                self._opening = loop.create_task(self._open())
            return
        batch = self._batch
        self._batch = []
        parts: list[bytes] = []
        waiters: list[Waiter | None] = []
        for load in self._load_first:
            parts.append(load)
            waiters.append(None)
        self._load_first = []
        for command, future in batch:
            if not future.done():  # cancelled callers are left out
                parts.append(command)
                waiters.append(future)
        timed, self._timed = self._timed, []
        if waiters and waiters[-1] is not None:  # someone still waits
            pipe.send(b"".join(parts), waiters)
            self.writes += 1
            self.commands += len(parts)
            if self._deadlines is not None and timed:
                # The budget starts at the write (Redis's latency, not the loop's), less the
                # time the gathering window held the batch: a decision's window wait is
                # inside its budget.
                self._deadlines.watch(timed, held_s=held_s)

    async def _open(self) -> None:
        try:
            old, self._pipe, self._connection = self._connection, None, None
            if old is not None:
                with contextlib.suppress(RedisError, OSError):
                    await self._release(old)
            # A connect or handshake that hangs counts as a stall too.
            async with asyncio.timeout(self._stall_s):
                connection = await self._acquire()
            refused: BaseException | None = None
            try:
                pipe = RespPipe.take_over(connection)
            except BaseException as failed:
                refused = failed
            # (Awaited outside the except clause: compiled, a coroutine waiting inside one
            # leaves its exception set as the one being handled for every other callback.)
            if refused is not None:
                await self._release(connection)
                raise refused
            self._connection, self._pipe = connection, pipe
            if self._budget is not None:
                # One timer for the batches of this connection (a new connection, a new one:
                # an old connection's batches all fail when it is lost).
                self._deadlines = BatchDeadline(self._budget, pipe.unread, self._loop)
        except (RedisError, OSError, TimeoutError) as exc:
            error = exc if isinstance(exc, RedisError | OSError) else RedisConnectionError(str(exc))
            batch, self._batch = self._batch, []
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        finally:
            self._opening = None
        if self._batch:
            self._flush()

    async def aclose(self) -> None:
        self._closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._timer_made = True
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._opening
        for _, future in self._batch:
            if not future.done():
                future.set_exception(RedisConnectionError("the limiter's store is closed"))
        self._batch = []
        if self._pipe is not None:
            self._pipe.abort("the limiter's store is closed")
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(RedisError, OSError):
                await self._release(connection)


class PipelinedSlidingLog:
    """``sliding_window.lua`` for the limiter, auto-pipelined; the same interface as
    :class:`~urr_gateway.ratelimit.store.RedisSlidingLog`."""

    def __init__(
        self,
        redis: Redis | RedisCluster,
        *,
        window_s: float = 0.0,
        soon_window_s: float | None = None,
        stall_s: float = 0.25,
        budget: RedisBudget | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``budget``: applied to every decision here, one timer per batch (the limiter then
        does not wrap each call in its own); ``None`` leaves timing to the caller.
        ``max_batch``: a batch holding this many commands is written at once, before the
        tick (or the window) ends. ``clock``: what the gathering window measures gaps with.
        ``window_s``: how long a batch may gather decisions; ``soon_window_s``: the same for
        the decisions asked through ``start_soon`` (the check API's), ``None``: ``window_s``."""
        self._clock = clock
        for window in (window_s, soon_window_s):
            if window is not None and not 0.0 <= window <= MAX_WINDOW_S:
                raise ValueError("the pipeline window is between 0 and 500 µs")
        self._soon_window_s = window_s if soon_window_s is None else soon_window_s
        if max_batch < 1:
            raise ValueError("a batch holds at least one command")
        self._max_batch = max_batch
        self._redis = redis
        self.budget = budget
        self._window_s = window_s
        self._stall_s = stall_s
        self._source = load_script_source()
        self._sha = hashlib.sha1(self._source.encode(), usedforsecurity=False).hexdigest()
        self._load_command = encode_command(b"SCRIPT", b"LOAD", self._source.encode())
        self._tenant_source = load_script_source(TENANT_SCRIPT_NAME)
        self._tenant_sha = hashlib.sha1(
            self._tenant_source.encode(), usedforsecurity=False
        ).hexdigest()
        self._tenant_load = encode_command(b"SCRIPT", b"LOAD", self._tenant_source.encode())
        #: policy -> its encoded command pieces, for one month (the tail names the month).
        self._tenant_encoded: dict[str, tuple[CompiledPolicy, QuotaMonth, bytes, bytes, bytes]] = {}
        #: (policy, tenant) -> its encoded keys, quota counter, hash tag and last command.
        self._tenant_parts: dict[tuple[str, str], _TenantParts] = {}
        self._month: QuotaMonth | None = None
        self._calls = CategoryCalls()
        self._encoded: dict[str, tuple[object, _EncodedCall]] = {}
        self._cluster = redis if isinstance(redis, RedisCluster) else None
        self._through_client = RedisSlidingLog(redis) if self._cluster is not None else None
        self._nodes: dict[str, _Node] = {}
        self._single: _Node | None = None

    # -- nodes -------------------------------------------------------------------------------

    def _new_node(self, acquire: Acquire, release: Release) -> _Node:
        return _Node(
            acquire,
            release,
            self._window_s,
            self._stall_s,
            self._load_command,
            self.budget,
            self._max_batch,
            self._clock,
        )

    def _single_node(self, redis: Redis) -> _Node:
        pool = redis.connection_pool

        async def acquire() -> AbstractConnection:
            connection: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
            return connection

        async def release(connection: AbstractConnection) -> None:
            await connection.disconnect()
            await pool.release(connection)

        self._single = self._new_node(acquire, release)
        return self._single

    def _ready_node(self) -> _Node | None:
        """The one node of a single Redis once made: found without a coroutine per decision
        (None: ask ``_node_for``)."""
        return self._single if self._cluster is None else None

    async def _node_for(self, tag: bytes) -> _Node:
        if self._cluster is None:
            node = self._single
            if node is None:
                node = self._single_node(self._redis)  # type: ignore[arg-type]
            return node
        return await self._node_for_slot(self._cluster, key_slot(tag))

    async def _node_for_slot(self, cluster: RedisCluster, slot: int) -> _Node:
        try:
            if not self._nodes:
                await cluster.initialize()
            owner = cluster.nodes_manager.get_node_from_slot(slot)
        except (RedisClusterException, LookupError) as exc:
            # Not RedisErrors (SlotNotCoveredError; a KeyError for a slot missing from the
            # client's map): a Redis failure all the same, for the failure policy, not a 500.
            raise RedisConnectionError(f"{type(exc).__name__}: {exc}") from exc
        node = self._nodes.get(owner.name)
        if node is None:

            async def acquire() -> AbstractConnection:
                connection = owner.acquire_connection()
                try:
                    await connection.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    owner.release(connection)
                    raise
                return connection

            async def release(connection: AbstractConnection) -> None:
                await connection.disconnect()
                owner.release(cast("Connection", connection))

            node = self._nodes[owner.name] = self._new_node(acquire, release)
        return node

    @property
    def nodes(self) -> tuple[_Node, ...]:
        single = (self._single,) if self._single is not None else ()
        return single + tuple(self._nodes.values())

    # -- the store interface -----------------------------------------------------------------

    async def load(self) -> None:
        """``SCRIPT LOAD`` through the client (every primary of a cluster), then open the
        lean connection(s) ahead of the first decisions."""
        await self._redis.script_load(self._source)
        await self._redis.script_load(self._tenant_source)
        if self._cluster is None:
            await self.ping()
        else:
            cluster = self._cluster
            nodes = [await self._node_for_slot(cluster, slot) for slot in _slot_samples(cluster)]
            await asyncio.gather(*(self._ping_node(node) for node in nodes))

    async def ping(self) -> None:
        await self._ping_node(await self._node_for(b"{}"))

    @staticmethod
    async def _ping_node(node: _Node) -> None:
        await node.submit(_PING)

    async def evaluate(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None = None,
    ) -> ScriptResult:
        """Decide and, when every window has room, record the request: one ``EVALSHA``,
        written with the other decisions of this tick."""
        encoded = self._encoded_for(category, specs)
        checked = revoked_key is not None
        known = encoded.commands.get((subject, revoked_key)) if cost == 1 else None
        if known is not None:
            command, tag = known
        else:
            command, tag = self._command(encoded, subject, cost, revoked_key)
        node = self._ready_node() or await self._node_for(tag)
        through = None
        try:
            reply = await node.submit(command, timed=True)
        except NoScriptError:
            pass  # nothing ran: run it once more below, the script loaded first
        except RedirectedError:
            through = self._through_client
            if through is None:
                raise
        else:
            return parse_reply(reply, encoded.windows, checked)
        # (Awaited outside the except clause: compiled, a coroutine waiting inside one leaves its
        # exception set as the one being handled for every other callback of the loop.)
        if through is not None:
            # redis-py's cluster client follows MOVED/ASK and refreshes its slot map.
            return await through.evaluate(subject, category, specs, cost, revoked_key)
        # The next batch loads the script first (within a budget of its own: a flushed
        # script cache is rare).
        reply = await node.submit(command, load_script=True, timed=True)
        return parse_reply(reply, encoded.windows, checked)

    def start(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None = None,
        *,
        load_script: bool = False,
    ) -> asyncio.Future[Any] | None:
        """``evaluate``'s write without its coroutine: the future of the raw reply (parse it
        with ``store.parse_reply``), under the budget like ``evaluate``'s. ``None`` when the
        node is not known without awaiting (a cluster, or before the first connection):
        then call ``evaluate``. ``load_script``: after a ``NOSCRIPT``, load it first. The
        limiter awaits this future itself, two coroutine levels fewer per decision."""
        node = self._single if self._cluster is None else None
        if node is None:
            return None
        command = self._decision_command(subject, category, specs, cost, revoked_key)
        return node.submit(command, load_script, True)  # positional: once per decision

    def start_soon(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None,
        waiter: Waiter,
        *,
        load_script: bool = False,
    ) -> bool:
        """``start`` with the caller's own waiter instead of a future (``_Node.put``): the raw
        reply is handed to ``waiter`` in the read that brings it. False, with nothing sent,
        when the node is not known without awaiting: then call ``evaluate``."""
        node = self._single if self._cluster is None else None
        if node is None:
            return False
        command = self._decision_command(subject, category, specs, cost, revoked_key)
        # positional: once per decision
        node.put(command, waiter, load_script, True, self._soon_window_s)
        return True

    def _decision_command(
        self,
        subject: str,
        category: str,
        specs: tuple[WindowSpec, ...],
        cost: int,
        revoked_key: str | None,
    ) -> bytes:
        """One decision's ``EVALSHA``: the subject's cached bytes when its cost is 1."""
        entry = self._encoded.get(category)  # ``_encoded_for``'s hit inlined
        if entry is not None and entry[0] is specs:
            encoded = entry[1]
        else:
            encoded = self._encoded_for(category, specs)
        known = encoded.commands.get((subject, revoked_key)) if cost == 1 else None
        if known is not None:
            return known[0]
        return self._command(encoded, subject, cost, revoked_key)[0]

    @staticmethod
    def _command(
        encoded: _EncodedCall, subject: str, cost: int, revoked_key: str | None
    ) -> tuple[bytes, bytes]:
        """The ``EVALSHA`` of one decision and its hash tag (kept when the cost is 1)."""
        tag = b"{" + subject.encode() + b"}"
        checked = revoked_key is not None
        parts = [encoded.heads[checked]]
        for suffix in encoded.suffixes:
            parts.append(bulk(tag + suffix))
        if revoked_key is not None:
            if hash_tag(revoked_key) != subject:
                raise ValueError("revoked_key must carry the subject's hash tag")
            parts.append(bulk(revoked_key.encode()))
        parts.append(bulk(b"%d" % cost))
        parts.append(encoded.tails[checked])
        command = b"".join(parts)
        if cost == 1:
            commands = encoded.commands
            if len(commands) >= COMMANDS_MAX:
                commands.clear()  # a caller may name any subject; the busy ones come back
            commands[(subject, revoked_key)] = (command, tag)
        return command, tag

    async def evaluate_tenant(
        self,
        compiled: CompiledPolicy,
        tenant: str,
        cost: int,
        quota: int,
        now_us: int | None = None,
    ) -> TenantScriptResult:
        """One tenant decision (``tenant_decision.lua``), in this tick's batch like the rest."""
        if now_us is None:
            return parse_tenant_reply(
                await self.tenant_reply(compiled, tenant, cost, quota), len(compiled.specs)
            )
        month = self._month = current_month(self._month)
        keys = tenant_keys(compiled, tenant)
        args = tenant_args(compiled, tenant, cost, quota, now_us, month)
        command = encode_command(
            b"EVALSHA", self._tenant_sha.encode(), b"%d" % len(keys), *keys, *args
        )
        node = self._ready_node() or await self._node_for(
            b"{" + tenant_subject(tenant).encode() + b"}"
        )
        through = None
        try:
            reply = await node.submit(command, timed=True)
        except NoScriptError:
            pass  # run once more below, the script loaded first
        except RedirectedError:
            through = self._through_client
            if through is None:
                raise
        else:
            return parse_tenant_reply(reply, len(compiled.specs))
        # (Awaited outside the except clauses, as in ``evaluate``.)
        if through is not None:
            return await through.evaluate_tenant(compiled, tenant, cost, quota, now_us)
        reply = await node.submit(command, load_script=self._tenant_load, timed=True)
        return parse_tenant_reply(reply, len(compiled.specs))

    def tenant_start(
        self,
        compiled: CompiledPolicy,
        tenant: str,
        cost: int,
        quota: int,
        *,
        load_script: bool = False,
    ) -> asyncio.Future[Any] | None:
        """``tenant_reply``'s write without its coroutine, as ``start`` is ``evaluate``'s: the
        future of the raw reply, under the budget, or ``None`` when the node is not known
        without awaiting (a cluster, or before the first connection): then call
        ``tenant_reply``. ``load_script``: after a ``NOSCRIPT``, load the tenant script first."""
        node = self._ready_node()
        if node is None:
            return None
        self._month = month = current_month(self._month)
        command = self._tenant_command(compiled, tenant, cost, quota, month)
        load: bool | bytes = self._tenant_load if load_script else False
        return node.submit(command, load_script=load, timed=True)

    async def tenant_reply(
        self, compiled: CompiledPolicy, tenant: str, cost: int, quota: int
    ) -> Sequence[int]:
        """The reply of one tenant decision on Redis's clock, as it came."""
        self._month = month = current_month(self._month)
        command, tag = self._tenant_command_and_tag(compiled, tenant, cost, quota, month)
        node = self._ready_node() or await self._node_for(tag)
        through = None
        try:
            reply: Sequence[int] = await node.submit(command, timed=True)
        except NoScriptError:
            pass  # run once more below, the script loaded first
        except RedirectedError:
            through = self._through_client
            if through is None:
                raise
        else:
            return reply
        # (Awaited outside the except clauses, as in ``evaluate``.)
        if through is not None:
            return await through.tenant_reply(compiled, tenant, cost, quota)
        reply = await node.submit(command, load_script=self._tenant_load, timed=True)
        return reply

    def _tenant_command(
        self, compiled: CompiledPolicy, tenant: str, cost: int, quota: int, month: QuotaMonth
    ) -> bytes:
        return self._tenant_command_and_tag(compiled, tenant, cost, quota, month)[0]

    def _tenant_command_and_tag(
        self, compiled: CompiledPolicy, tenant: str, cost: int, quota: int, month: QuotaMonth
    ) -> tuple[bytes, bytes]:
        """The ``EVALSHA`` of a tenant decision on Redis's clock, from pieces encoded once per
        published policy and month (the same bytes ``encode_command`` would make of
        ``tenant_args``), and the tenant's hash tag (which node decides)."""
        entry = self._tenant_encoded.get(compiled.id)
        if entry is None or entry[0] is not compiled or entry[1] is not month:
            windows = len(compiled.specs)
            head = (
                b"*%d\r\n" % (3 + windows + 9 + 2 * windows)
                + bulk(b"EVALSHA")
                + bulk(self._tenant_sha.encode())
                + bulk(b"%d" % windows)
            )
            middle = bulk(b"%d" % windows) + bulk(b"1" if compiled.enforce else b"0")
            tail = bulk(b"%d" % USAGE_TTL_S) + bulk(b"")
            tail += bulk(b"%d" % month.start_s) + bulk(b"%d" % month.end_s)
            for spec in compiled.specs:
                tail += bulk(b"%d" % spec.limit) + bulk(b"%d" % spec.window_us)
            entry = (compiled, month, head, middle, tail)
            self._tenant_encoded[compiled.id] = entry
        _, _, head, middle, tail = entry
        tenant_entry = self._tenant_parts.get((compiled.id, tenant))
        if (
            tenant_entry is None
            or tenant_entry.compiled is not compiled
            or tenant_entry.month is not month
        ):
            if len(self._tenant_parts) >= TENANT_PARTS_MAX:
                # Bounded: a caller may name any tenant id; the busy ones come back at once.
                self._tenant_parts.clear()
            # tenant_keys, from the hash tag encoded once.
            tag = tenant_tag(tenant).encode()
            tenant_entry = _TenantParts(
                compiled,
                month,
                b"".join([bulk(tag + suffix) for suffix in compiled.window_suffixes]),
                bulk(compiled.quota_counter(tenant, month)),
                tag,
            )
            self._tenant_parts[(compiled.id, tenant)] = tenant_entry
        if cost == 1 and quota == tenant_entry.quota:
            # Most decisions: the tenant's last command again, byte for byte.
            return tenant_entry.command, tenant_entry.tag
        keys, counter = tenant_entry.keys, tenant_entry.counter
        command = b"".join(
            (head, keys, bulk(b"%d" % cost), middle, bulk(b"%d" % quota), counter, tail)
        )
        if cost == 1:
            tenant_entry.quota, tenant_entry.command = quota, command
        return command, tenant_entry.tag

    def _encoded_for(self, category: str, specs: tuple[WindowSpec, ...]) -> _EncodedCall:
        entry = self._encoded.get(category)
        if entry is not None and entry[0] is specs:
            return entry[1]
        call = self._calls.get(category, specs)
        encoded = _EncodedCall(self._sha.encode(), call.suffixes, call.window_args)
        self._encoded[category] = (specs, encoded)
        return encoded

    async def exists(self, key: str) -> int:
        """``EXISTS key``, written with this tick's decisions on the node that holds ``key``
        (a lookup without redis-py's per-call cost). Not under the decision budget: the
        caller times it. ``RedirectedError`` when a cluster slot moved: ask through redis-py."""
        raw = key.encode()
        node = await self._node_for(raw)
        return int(await node.submit(encode_command(b"EXISTS", raw)))

    async def aclose(self) -> None:
        """Give the lean connections back to the client (closed)."""
        for node in self.nodes:
            await node.aclose()


def _slot_samples(cluster: RedisCluster) -> list[int]:
    """One slot per primary, so ``load`` opens a connection to each."""
    seen: dict[str, int] = {}
    for slot, nodes in cluster.nodes_manager.slots_cache.items():
        if nodes:
            seen.setdefault(nodes[0].name, slot)
    return list(seen.values())
