"""A one-shot event-loop timer with microsecond resolution: a Linux ``timerfd`` the loop watches.

Why: the pipeline's gathering window (``pipeline._Node``) holds a batch for at most a few
hundred µs, and the event loop cannot time that. uvloop rounds a ``call_later`` delay to whole
milliseconds (200 and 500 µs fire at once, 600 µs after 1 ms) and asyncio's ``epoll_wait``
sleeps whole milliseconds too, so a held batch whose next decision did not come waited for a
1 ms timer whatever the window: a 250 µs window could delay a lone decision by 1-2 ms. A
``timerfd`` armed for the window's rest becomes readable on time (the kernel's hrtimer), which
wakes the loop's ``epoll_wait`` whatever its own timeout.

Cost: one ``timerfd_settime`` system call to arm, one to disarm a batch written before its
window closed (neither touches the network), and one 8-byte ``read`` when the timer fires.

Linux only (``timerfd_create`` through ``ctypes`` from the C library, as Python 3.11 has no
``os.timerfd_create``); ``FineTimer.create`` answers ``None`` where there is none, or where the
loop cannot watch a file descriptor, and the caller falls back to the loop's own timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Callable
from typing import Any

__all__ = ["AVAILABLE", "FineTimer"]

_CLOCK_MONOTONIC = 1
_NS_PER_S = 1_000_000_000
#: The shortest delay armed: 0 would disarm the timer instead.
_MIN_NS = 1_000


class _Timespec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _Itimerspec(ctypes.Structure):
    _fields_ = (("it_interval", _Timespec), ("it_value", _Timespec))


def _timerfd_functions() -> tuple[Any, Any] | None:
    """``timerfd_create`` and ``timerfd_settime`` from the C library, or ``None``."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        create = libc.timerfd_create
        settime = libc.timerfd_settime
    except (OSError, AttributeError):
        return None
    create.argtypes = (ctypes.c_int, ctypes.c_int)
    create.restype = ctypes.c_int
    settime.argtypes = (
        ctypes.c_int,
        ctypes.c_int,
        ctypes.POINTER(_Itimerspec),
        ctypes.POINTER(_Itimerspec),
    )
    settime.restype = ctypes.c_int
    return create, settime


_FUNCTIONS = _timerfd_functions()
#: Whether this platform has ``timerfd`` (a loop may still refuse to watch it).
AVAILABLE = _FUNCTIONS is not None


class FineTimer:
    """One one-shot timer: ``arm(delay_s)`` calls ``callback()`` once ``delay_s`` has passed
    (from the loop, like any reader callback), unless ``cancel()`` came first. Arming again
    moves the deadline. ``cancel`` is named like ``asyncio.Handle.cancel`` so the timer can
    stand where a loop handle stood."""

    __slots__ = ("_callback", "_fd", "_loop", "_settime", "_spec", "_zero", "armed")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, fd: int, settime: Any, callback: Callable[[], Any]
    ) -> None:
        self._loop = loop
        self._fd = fd
        self._settime = settime
        self._callback = callback
        self._spec = _Itimerspec()
        self._zero = _Itimerspec()
        self.armed = False

    @classmethod
    def create(
        cls, loop: asyncio.AbstractEventLoop, callback: Callable[[], Any]
    ) -> FineTimer | None:
        """A timer on ``loop``, or ``None`` where there is no ``timerfd`` or the loop cannot
        watch one (Windows' proactor loop)."""
        if _FUNCTIONS is None:
            return None
        create, settime = _FUNCTIONS
        fd = create(_CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            return None
        timer = cls(loop, fd, settime, callback)
        try:
            loop.add_reader(fd, timer._fired)
        except (NotImplementedError, OSError, RuntimeError):
            os.close(fd)
            return None
        return timer

    def arm(self, delay_s: float) -> None:
        """Fire once ``delay_s`` from now (at least 1 µs)."""
        ns = int(delay_s * _NS_PER_S)
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(ns if ns > _MIN_NS else _MIN_NS, _NS_PER_S)
        if self._settime(self._fd, 0, self._spec, None) != 0:
            raise OSError(ctypes.get_errno(), "timerfd_settime failed")
        self.armed = True

    def cancel(self) -> None:
        """Disarm: the callback is not called for the current arming."""
        if self.armed:
            self.armed = False
            # Disarming also clears an expiry not read yet, so the fd stops being readable.
            self._settime(self._fd, 0, self._zero, None)

    def _fired(self) -> None:
        try:
            os.read(self._fd, 8)
        except BlockingIOError:  # disarmed (or re-armed) after the loop saw it readable
            return
        if self.armed:
            self.armed = False
            self._callback()

    def close(self) -> None:
        self.armed = False
        with contextlib.suppress(Exception):  # a loop already closed has let go of it
            self._loop.remove_reader(self._fd)
        with contextlib.suppress(OSError):
            os.close(self._fd)
