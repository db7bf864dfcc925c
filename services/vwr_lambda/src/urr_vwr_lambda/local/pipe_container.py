"""One emulated Lambda container: a process fed through a pipe, one call at a time.

It replaces a one-worker ``ProcessPoolExecutor`` per container: the pool's hop (a call queue,
a result queue, a feeder thread and a management thread, each call pickled in pieces) cost
about 120-160 us of CPU per call on both sides together, a pipe about 25
(``bench/apigw_hop.py``). The emulator never gives a container a second call before the first
answered (``containers.Containers``), so a container needs no queue of its own; answers come
back in the order calls went in, which is all the reader relies on. When the process dies,
the call in flight and every later one fail with ``BrokenProcessPool``, as the pool's did;
when the emulator dies, the worker reads the end of its pipe and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import struct
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool
from multiprocessing.connection import Connection
from multiprocessing.context import SpawnContext, SpawnProcess
from typing import Any


def serve(conn: Connection, initializer: Callable[[], None] | None) -> None:
    """The container's loop: run each call sent, send back ``(ok, result or exception)``.

    Calls are read as ``LoopContainer`` reads answers (``read_messages``: whatever waits in one
    read, not a length and then its bytes in two) and answers pickled by ``pickle.dumps``
    (``Connection.send`` pickled through a ``ForkingPickler`` made per message, copying
    ``copyreg``'s dispatch table each time, for reducers of sockets and connections that no
    call or answer holds). Both ends' framing is ``Connection.send_bytes``'s, so either parent
    (``LoopContainer`` or ``PipeContainer``) reads the answers as before.
    """
    if initializer is not None:
        initializer()
    fd = conn.fileno()
    pending = b""
    while True:
        try:
            calls, pending = read_messages(fd, pending)
        except (EOFError, OSError):  # the emulator is gone
            return
        for raw in calls:
            call = pickle.loads(raw)  # noqa: S301 - our own parent
            if call is None:
                return
            fn, args, kwargs = call
            try:
                answer: tuple[bool, Any] = (True, fn(*args, **kwargs))
            except BaseException as exc:
                answer = (False, exc)
            try:
                data = pickle.dumps(answer, pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                failed = RuntimeError(f"the answer could not be sent: {exc!r}")
                data = pickle.dumps((False, failed), pickle.HIGHEST_PROTOCOL)
            try:
                conn.send_bytes(data)
            except OSError:  # the emulator is gone
                return


def spawn_container(
    context: SpawnContext, initializer: Callable[[], None] | None
) -> tuple[Connection, SpawnProcess]:
    """A started container process running ``serve`` and this side of its pipe."""
    conn, child = context.Pipe()
    process = context.Process(target=serve, args=(child, initializer), daemon=True)
    process.start()
    child.close()
    return conn, process


#: The first read of an answer: most answers (a few kB of JSON) fit whole.
_FIRST_READ = 65536


def read_messages(fd: int, pending: bytes = b"") -> tuple[list[bytes], bytes]:
    """The messages of the pipe ``fd`` as ``Connection.send_bytes`` framed them (a 4-byte
    big-endian length, or -1 and an 8-byte one, then the bytes): at least one, each whole,
    and the bytes of the next one already read. ``pending``: those of the last call.

    ``Connection.recv_bytes`` reads a length and its bytes separately (two reads and a dozen
    Python calls per answer); this takes whatever is waiting in one read, usually one whole
    answer. ``EOFError`` when the pipe ends first.
    """
    data = pending
    messages: list[bytes] = []
    while True:
        data = _read_at_least(fd, data, 4, block=not messages)
        if len(data) < 4:
            return messages, data
        (size,) = struct.unpack_from("!i", data)
        header = 4
        if size == -1:  # over 2 GiB: the length follows in 8 bytes
            data = _read_at_least(fd, data, 12, block=not messages)
            if len(data) < 12:
                return messages, data
            (size,) = struct.unpack_from("!Q", data, 4)
            header = 12
        data = _read_at_least(fd, data, header + size, block=not messages)
        if len(data) < header + size:
            return messages, data
        messages.append(data[header : header + size])
        data = data[header + size :]


def _read_at_least(fd: int, data: bytes, count: int, *, block: bool) -> bytes:
    """``data`` and what is read after it, until it holds ``count`` bytes; without ``block``,
    only what it already holds (a message begun is finished by the next call)."""
    if not block:
        return data
    while len(data) < count:
        chunk = os.read(fd, max(_FIRST_READ, count - len(data)))
        if not chunk:
            raise EOFError("the container closed its pipe")
        data += chunk
    return data


class PipeContainer(Executor):
    """An ``Executor`` of one spawned process, for ``loop.run_in_executor``."""

    def __init__(
        self, context: SpawnContext, *, initializer: Callable[[], None] | None = None
    ) -> None:
        self._conn, self._process = spawn_container(context, initializer)
        self._lock = threading.Lock()
        self._in_flight: deque[Future[Any]] = deque()
        self._broken = False
        self._closed = False
        self._reader = threading.Thread(target=self._read, daemon=True, name="vwr-container")
        self._reader.start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        with self._lock:
            if self._broken or self._closed:
                future.set_exception(BrokenProcessPool("the container is gone"))
                return future
            self._in_flight.append(future)
            try:
                self._conn.send((fn, args, kwargs))
            except Exception as exc:
                self._in_flight.pop()
                future.set_exception(exc)
        return future

    def _read(self) -> None:
        while True:
            try:
                ok, value = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._in_flight.popleft()
            if future.set_running_or_notify_cancel():
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        with self._lock:
            self._broken = True
            lost = list(self._in_flight)
            self._in_flight.clear()
        for future in lost:
            if future.set_running_or_notify_cancel():
                future.set_exception(BrokenProcessPool("the container process died"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Ask the process to stop after its call in flight (``cancel_futures``: nothing queues)."""
        with self._lock:
            if not self._closed and not self._broken:
                with contextlib.suppress(OSError):  # already gone: nothing to stop
                    self._conn.send(None)
            self._closed = True
        if wait:
            self._process.join()
            self._reader.join()  # it saw the end of the pipe: nothing reads it any more
            self._conn.close()


class LoopContainer:
    """One emulated container read from the event loop itself (no reader thread).

    The same process and pipe protocol as ``PipeContainer``, but the answer is read by a
    callback the loop runs when the pipe turns readable (``loop.add_reader``), and the call's
    future is an ``asyncio`` one. ``PipeContainer``'s way cost each call a reader thread's
    wake-up and its fight for the GIL with the loop, a ``concurrent.futures.Future`` (with its
    ``threading.Condition``), and a ``call_soon_threadsafe`` that writes to the loop's self-pipe
    and wakes it a second time. A container holds one call at a time (``Containers``), so at
    most one answer is ever waiting in the pipe; it is written whole, so reading it once the
    pipe is readable does not wait. Built and used on one running loop.
    """

    def __init__(
        self, context: SpawnContext, *, initializer: Callable[[], None] | None = None
    ) -> None:
        self._conn, self._process = spawn_container(context, initializer)
        self._loop = asyncio.get_running_loop()
        self._in_flight: deque[asyncio.Future[Any]] = deque()
        self._pending = b""  # the beginning of an answer not read whole yet
        self._broken = False
        self._closed = False
        self._loop.add_reader(self._conn.fileno(), self._answered)

    def call(self, fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]:
        """Send ``fn(*args)`` to the container; the future of its answer."""
        future: asyncio.Future[Any] = self._loop.create_future()
        if self._broken or self._closed:
            future.set_exception(BrokenProcessPool("the container is gone"))
            return future
        try:
            self._conn.send_bytes(pickle.dumps((fn, args, {}), pickle.HIGHEST_PROTOCOL))
        except Exception as exc:
            future.set_exception(exc)
            return future
        self._in_flight.append(future)
        return future

    def _answered(self) -> None:
        try:
            answers, self._pending = read_messages(self._conn.fileno(), self._pending)
        except (EOFError, OSError):
            self._gone()
            return
        for answer in answers:
            self._settle(answer)

    def _settle(self, answer: bytes) -> None:
        ok, value = pickle.loads(answer)  # noqa: S301 - our own child
        future = self._in_flight.popleft()
        if future.done():  # nobody waits for it (cancelled)
            return
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def _gone(self) -> None:
        with contextlib.suppress(ValueError, OSError):  # already closed
            self._loop.remove_reader(self._conn.fileno())
        self._broken = True
        while self._in_flight:
            future = self._in_flight.popleft()
            if not future.done():
                future.set_exception(BrokenProcessPool("the container process died"))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Ask the process to stop after its call in flight; ``wait``: until it has.

        The answer of the call in flight is still read when ``wait`` (its future resolves)."""
        if not self._closed and not self._broken:
            with contextlib.suppress(OSError):
                self._conn.send(None)
        self._closed = True
        if wait:
            self._process.join()
            while self._in_flight and not self._broken and self._conn.poll(0):
                self._answered()
            self._gone()
            self._conn.close()
