"""A lean pipelined RESP connection: many commands in one write, replies matched in order.

redis-py spends ~100-150 µs of client CPU per command (connection checkout, argument
encoding, a parser round per reply, retries, hooks, and under a ``socket_timeout`` a task per
write). Its users here send few kinds of commands (the gateway's limiter an ``EVALSHA`` of its
script, the queue's store its scripts and a ``SET``), so they write pre-encoded commands on a
socket of their own and let hiredis parse whatever arrived. (Moved here from
``urr_gateway.ratelimit.resp`` unchanged, with :class:`RespLane` added, so the gateway and the
queue share it.)

The socket comes from the application's redis-py client: redis-py opens it (TCP or unix,
TLS, AUTH, ``SELECT``, ``HELLO``: whatever the client is configured with), then
:meth:`RespPipe.take_over` moves the transport to this protocol. The connection stays
checked out of the client's pool for good, so closing the client closes it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
from collections import deque
from typing import TYPE_CHECKING, Any, Protocol, cast

import hiredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.connection import AbstractConnection

#: What ``hiredis.Reader.gets`` answers while a reply is still incomplete.
_INCOMPLETE = object()


class Waiter(Protocol):
    """What a reply is handed to: an ``asyncio.Future``, or an object answering the same three
    calls (the limiter's ``check_soon`` decision, which then runs its next step at once,
    without a future and the loop handle its done-callback costs)."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


class RedirectedError(ResponseError):
    """A cluster node answered ``MOVED`` or ``ASK``: the command did not run there."""


def encode_command(*parts: bytes) -> bytes:
    """One command as a RESP array of bulk strings."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


def bulk(part: bytes) -> bytes:
    """One bulk string of a command (for commands assembled from pre-encoded pieces)."""
    return b"$%d\r\n%s\r\n" % (len(part), part)


def reply_error(message: str) -> ResponseError:
    """The redis-py exception for an error reply, so callers handle both paths alike."""
    if message.startswith("NOSCRIPT"):
        return NoScriptError(message)
    if message.startswith(("MOVED ", "ASK ")):
        return RedirectedError(message)
    return ResponseError(message)


class RespPipe(asyncio.Protocol):
    """Writes batches of encoded commands; each reply resolves the next waiting future.

    A waiter (``Waiter``: a future, or an object resolved in place) may be ``None`` (a reply
    nobody needs) or a future its caller has cancelled:
    the reply is read and dropped, so the connection stays in step. When the connection is
    lost every waiter gets a :class:`redis.exceptions.ConnectionError`.
    """

    def __init__(
        self,
        transport: asyncio.Transport,
        previous: asyncio.BaseProtocol | None = None,
    ) -> None:
        self._transport = transport
        self._previous = previous
        self._loop = asyncio.get_running_loop()
        self._reader = hiredis.Reader(notEnoughData=_INCOMPLETE)
        self._waiting: deque[Waiter | None] = deque()
        self.closed = False
        #: Loop time of the last reply (or of a send to an idle connection).
        self.progress_at = self._loop.time()

    @classmethod
    def take_over(cls, connection: AbstractConnection) -> RespPipe:
        """Move a connected redis-py connection's transport to a new pipe."""
        writer = connection._writer  # the one place the socket is borrowed
        if writer is None:
            raise RedisConnectionError("the connection is not open")
        # asyncio's and uvloop's transports alike (uvloop's are not asyncio.Transport
        # subclasses, but have the same methods).
        transport = cast("asyncio.Transport", writer.transport)
        pipe = cls(transport, transport.get_protocol())
        transport.set_protocol(pipe)
        return pipe

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def stalled_for(self, now: float) -> float:
        """How long replies have been owed without any arriving (0 when none is owed)."""
        return now - self.progress_at if self._waiting else 0.0

    def unread(self) -> bool:
        """Has Redis sent something this process has not read yet? (One ``poll`` of the
        socket, never a read.) True while the event loop is too busy to read a reply that
        has arrived: a late reply is then the loop's doing, not Redis's. A closed socket
        counts as readable too (the loop will report it)."""
        sock = self._transport.get_extra_info("socket")
        if sock is None or self.closed:
            return False
        try:
            poller = select.poll()
            poller.register(sock.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return False

    def send(self, payload: bytes, waiters: list[Waiter | None]) -> None:
        """Write ``payload`` (one encoded command per waiter) in one go."""
        if self.closed:
            _fail(waiters, RedisConnectionError("connection closed"))
            return
        if not self._waiting:
            self.progress_at = self._loop.time()
        self._waiting.extend(waiters)
        self._transport.write(payload)

    def abort(self, reason: str) -> None:
        """Close now; every waiter fails with ``reason``."""
        if not self.closed:
            self.closed = True
            self._fail_all(RedisConnectionError(reason))
        # abort, not close: a peer that stopped reading would keep a close waiting forever.
        self._transport.abort()

    # -- asyncio.Protocol --------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        # Before any waiter is resolved: a waiter resolved in place may write the next batch
        # at once, whose stall check reads this.
        self.progress_at = self._loop.time()
        waiting = self._waiting
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self.abort(f"protocol error: {exc}")
                return
            if reply is _INCOMPLETE:
                break
            if not waiting:
                self.abort("a reply nobody asked for")
                return
            future = waiting.popleft()
            if future is None or future.done():
                continue
            if isinstance(reply, hiredis.ReplyError):
                future.set_exception(reply_error(str(reply)))
            else:
                future.set_result(reply)

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        reason = f"connection lost: {exc}" if exc is not None else "connection closed"
        self._fail_all(RedisConnectionError(reason))
        if self._previous is not None:
            # redis-py's stream protocol learns it too, so its ``disconnect`` (called when
            # the client closes) does not wait for a close it would never hear of.
            self._previous.connection_lost(exc)

    def _fail_all(self, error: Exception) -> None:
        waiting = list(self._waiting)
        self._waiting.clear()
        _fail(waiting, error)


def _fail(waiters: list[Waiter | None], error: Exception) -> None:
    for future in waiters:
        if future is not None and not future.done():
            future.set_exception(error)


class RespLane:
    """The commands of many callers on one pipelined connection of a single-node redis-py
    client (never a cluster's: a command goes to the one node the client names).

    The connection is checked out of the client's pool on first use and kept (closing the
    client closes it); a lost one is replaced on the next call. A caller's replies come back
    in one write's order: :meth:`call` for one command, :meth:`call_many` for several written
    together (Redis runs one connection's commands in the order sent).

    The timeout is redis-py's ``socket_timeout`` for a whole connection rather than a task per
    command: when replies are owed and none has arrived for ``timeout_s`` (and none waits
    unread, which would mean the event loop, not Redis, is late), the connection is aborted
    and every caller waiting on it gets a ``ConnectionError``, a ``RedisError`` as a
    redis-py timeout is. An error reply raises redis-py's exception for it
    (``NoScriptError``, ``ResponseError``).
    """

    def __init__(self, redis: Redis, *, timeout_s: float) -> None:
        self._pool = redis.connection_pool
        #: redis-py's own argument encoding (str as the client's encoding, numbers, bytes).
        self._encode = self._pool.get_encoder().encode  # type: ignore[no-untyped-call]
        self._timeout_s = timeout_s
        self._pipe: RespPipe | None = None
        self._connection: AbstractConnection | None = None
        self._opening: asyncio.Task[RespPipe] | None = None
        self._watch: asyncio.TimerHandle | None = None

    def command(self, *parts: bytes | str | int | float) -> bytes:
        """One command encoded, its arguments as redis-py encodes them."""
        return b"*%d\r\n%s" % (len(parts), self.arguments(*parts))

    def arguments(self, *parts: bytes | str | int | float) -> bytes:
        """Arguments encoded, without the command's count: a part of a command made once
        and reused (``command_from``)."""
        encode = self._encode
        out = []
        for part in parts:
            data = encode(part)
            out.append(b"$%d\r\n%s\r\n" % (len(data), data))
        return b"".join(out)

    def command_from(
        self, head: bytes, head_count: int, *parts: bytes | str | int | float
    ) -> bytes:
        """A command whose first ``head_count`` arguments are ``head`` (from ``arguments``),
        then ``parts``."""
        return b"*%d\r\n%s%s" % (head_count + len(parts), head, self.arguments(*parts))

    async def call(self, command: bytes) -> Any:
        """Send one encoded command; its reply (an error reply raised)."""
        pipe = self._pipe
        if pipe is None or pipe.closed:
            pipe = await self._open()
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        pipe.send(command, [future])
        if self._watch is None:
            self._arm(self._timeout_s)
        return await future

    async def call_many(self, commands: bytes, count: int) -> list[Any]:
        """Send ``count`` encoded commands in one write; their replies in order, an error
        reply as its exception (not raised: the caller decides which matter)."""
        pipe = self._pipe
        if pipe is None or pipe.closed:
            pipe = await self._open()
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = [loop.create_future() for _ in range(count)]
        pipe.send(commands, list(futures))
        if self._watch is None:
            self._arm(self._timeout_s)
        replies: list[Any] = []
        for future in futures:
            try:
                replies.append(await future)
            except ResponseError as exc:
                replies.append(exc)
            except BaseException:
                for other in futures:  # nobody is left to read them
                    other.cancel()
                raise
        return replies

    def _arm(self, delay_s: float) -> None:
        self._watch = asyncio.get_running_loop().call_later(delay_s, self._check)

    def _check(self) -> None:
        """The watchdog: abort a connection with replies owed for ``timeout_s``."""
        self._watch = None
        pipe = self._pipe
        if pipe is None or pipe.closed or not pipe.waiting:
            return  # the next send arms it again
        stalled = pipe.stalled_for(asyncio.get_running_loop().time())
        if stalled >= self._timeout_s and not pipe.unread():
            pipe.abort(f"no reply from Redis for {stalled * 1000:.0f} ms")
            return
        self._arm(max(self._timeout_s - stalled, self._timeout_s / 10))

    async def _open(self) -> RespPipe:
        """The connection's pipe, opened once for every caller waiting on it."""
        if self._opening is None:
            self._opening = asyncio.get_running_loop().create_task(self._connect())
        return await asyncio.shield(self._opening)

    async def _connect(self) -> RespPipe:
        try:
            old, self._pipe, self._connection = self._connection, None, None
            if old is not None:
                with contextlib.suppress(RedisError, OSError):
                    await old.disconnect()
                    await self._pool.release(old)
            try:
                # A pool with no connection free, a connect or a handshake that hangs:
                # redis-py's own timeouts (the blocking pool's, socket_connect_timeout).
                connection: AbstractConnection = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            except OSError as exc:
                raise RedisConnectionError(f"cannot connect to Redis: {exc}") from exc
            refused: BaseException | None = None
            try:
                pipe = RespPipe.take_over(connection)
            except BaseException as failed:
                refused = failed
            # (Awaited outside the except clause: compiled, a coroutine waiting inside one
            # leaves its exception set as the one being handled for every other callback.)
            if refused is not None:
                await self._pool.release(connection)
                raise refused
            self._connection, self._pipe = connection, pipe
            return pipe
        finally:
            self._opening = None

    async def aclose(self) -> None:
        """Give the connection back, closed (closing the client does as much)."""
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        if self._opening is not None:
            self._opening.cancel()
            with contextlib.suppress(asyncio.CancelledError, RedisError, OSError):
                await self._opening
        if self._pipe is not None:
            self._pipe.abort("the lane is closed")
            self._pipe = None
        if self._connection is not None:
            connection, self._connection = self._connection, None
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()
                await self._pool.release(connection)
