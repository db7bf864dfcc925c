"""Keep-alive connections to one upstream, at most ``limit`` of them: the upstream's bulkhead.

A request takes the most recently used idle connection (warm, least likely to have been
closed by the upstream), else opens one while the pool is under its limit, else waits at
most ``pool_timeout_s`` for one to come back (``PoolTimeout``). Waiters are served in
arrival order. A connection idle longer than ``idle_timeout_s`` is closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque

from urr_gateway.handover import hand_to_oldest
from urr_gateway.upstream.connection import UpstreamConnection
from urr_gateway.upstream.deadlines import ReadDeadlines
from urr_gateway.upstream.errors import PoolTimeout, UpstreamConnectError

#: What a waiter is handed: a connection to reuse, or ``None``: a slot to open one in.
_Handover = UpstreamConnection | None


class ConnectionPool:
    def __init__(
        self,
        host: str,
        port: int,
        *,
        limit: int,
        connect_timeout_s: float,
        pool_timeout_s: float,
        idle_timeout_s: float,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.limit = limit
        self._connect_timeout_s = connect_timeout_s
        self._pool_timeout_s = pool_timeout_s
        self._idle_timeout_s = idle_timeout_s
        self._tls = tls
        self._idle: list[UpstreamConnection] = []
        #: Connections open, being opened, or promised to a waiter (never above ``limit``).
        self._open = 0
        self._waiters: deque[asyncio.Future[_Handover]] = deque()
        self._sweep: asyncio.TimerHandle | None = None
        self._closed = False
        #: The loop of the first ``acquire`` (``asyncio.get_running_loop`` costs a
        #: ``getpid`` system call per call on Python 3.11); the connections live on it.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._deadlines: ReadDeadlines | None = None

    def read_deadlines(self, loop: asyncio.AbstractEventLoop) -> ReadDeadlines:
        """The read deadlines of this pool's answers (its connections all live on ``loop``)."""
        deadlines = self._deadlines
        if deadlines is None or deadlines.loop is not loop:
            deadlines = self._deadlines = ReadDeadlines(loop)
        return deadlines

    @property
    def open_connections(self) -> int:
        return self._open

    @property
    def idle_connections(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def take_idle(self) -> UpstreamConnection | None:
        """The most recently used idle connection still fit for use, if any (``acquire``
        without its coroutine, for the common case of a warm pool)."""
        loop = self._loop
        if loop is None:
            return None  # the first acquire learns the loop
        idle = self._idle
        while idle:
            connection = idle.pop()
            if not connection.closed and loop.time() - connection.idle_since < self._idle_timeout_s:
                return connection
            self._drop(connection)
        return None

    async def acquire(self) -> UpstreamConnection:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        connection = self.take_idle()
        if connection is not None:
            return connection
        if self._open < self.limit:
            self._open += 1
            return await self._connect(loop)
        handed = await self._wait(loop)
        if handed is not None:
            return handed
        return await self._connect(loop)  # the slot was reserved for us

    def release(self, connection: UpstreamConnection, reusable: bool) -> None:
        """Called once per acquire, when the answer is complete or abandoned."""
        if not reusable or self._closed:
            connection.close()
            self._open -= 1
            self._hand_slot()
            return
        waiters = self._waiters
        if waiters and hand_to_oldest(waiters, connection):  # nobody waiting: no call
            return
        connection.idle_since = connection.loop.time()
        self._idle.append(connection)
        if self._sweep is None:
            self._sweep = connection.loop.call_later(self._idle_timeout_s, self._sweep_idle)

    def lost(self, connection: UpstreamConnection) -> None:
        """An idle connection was closed by the upstream."""
        if connection in self._idle:
            self._idle.remove(connection)
            self._open -= 1
            self._hand_slot()

    async def close(self) -> None:
        self._closed = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in self._idle:
            connection.close()
        self._open -= len(self._idle)
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(PoolTimeout("the gateway is shutting down"))

    async def _connect(self, loop: asyncio.AbstractEventLoop) -> UpstreamConnection:
        """Open a connection in a slot already counted in ``_open``."""
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(self, loop),
                    self.host,
                    self.port,
                    ssl=self._tls,
                    server_hostname=self.host if self._tls is not None else None,
                )
        except (OSError, TimeoutError) as exc:
            self._open -= 1
            self._hand_slot()
            raise UpstreamConnectError(f"{self.host}:{self.port}: {exc!r}") from exc
        except BaseException:
            self._open -= 1
            self._hand_slot()
            raise
        return connection

    async def _wait(self, loop: asyncio.AbstractEventLoop) -> _Handover:
        waiter: asyncio.Future[_Handover] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self._pool_timeout_s, _expire, waiter, self._pool_timeout_s)
        try:
            return await waiter
        except asyncio.CancelledError:
            # Handed something just as we were cancelled: pass it on, not lose it.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self.release(handed, True)
                else:
                    self._open -= 1
                    self._hand_slot()
            raise
        finally:
            timer.cancel()
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def _hand_slot(self) -> None:
        """A slot freed up: the first live waiter may open a connection in it."""
        waiters = self._waiters
        while waiters and self._open < self.limit:
            waiter = waiters.popleft()
            if not waiter.done():
                self._open += 1
                waiter.set_result(None)
                return

    def _drop(self, connection: UpstreamConnection) -> None:
        connection.close()
        self._open -= 1

    def _sweep_idle(self) -> None:
        self._sweep = None
        if not self._idle:
            return
        loop = self._idle[0].loop
        now = loop.time()
        keep = [c for c in self._idle if not c.closed and now - c.idle_since < self._idle_timeout_s]
        for connection in self._idle:
            if connection not in keep:
                self._drop(connection)
        self._idle = keep
        self._hand_slot()
        if keep:
            oldest = min(c.idle_since for c in keep)
            delay = max(oldest + self._idle_timeout_s - now, 0.05)
            self._sweep = loop.call_later(delay, self._sweep_idle)


def _expire(waiter: asyncio.Future[_Handover], timeout_s: float) -> None:
    if not waiter.done():
        waiter.set_exception(
            PoolTimeout(f"no connection to the upstream came free within {timeout_s:g} s")
        )
