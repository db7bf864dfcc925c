"""SIGINT/SIGTERM for ``urr-devstack up``: the handler only records; the loops act.

A Python signal handler runs in the main thread between two bytecodes of whatever that thread
was doing, including in the middle of a write holding a ``threading.Lock``. A handler that
prints, logs or signals children through code taking that lock deadlocks the stop it was asked
for (issue 22: honcho's handler re-entering our printer's lock). So the handler here takes no
lock and does no I/O: it stores the time and the signal number in plain attributes, and the
supervisor's loop, the start-up steps and the stop waits read them.

A second signal escalates: everything started is killed at once (SIGKILL) rather than drained.
Signals closer together than ``escalate_after_s`` count as one: ``make`` and ``uv`` pass a
terminal's Ctrl-C on, so one key press can reach us two or three times within milliseconds.
"""

from __future__ import annotations

import signal
import time
from types import FrameType, TracebackType
from typing import Any

#: Signals at most this far apart are one request (one Ctrl-C relayed by make and uv).
ESCALATE_AFTER_S = 0.5
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopping(BaseException):
    """A stop was asked for while the stack was still starting (raised by ``checkpoint``)."""


class StopSignals:
    """Records SIGINT/SIGTERM while installed; safe against repeated and nested delivery.

    Only the main thread writes (the handler runs there); other threads read plain
    attributes. Nested delivery (a signal arriving while the handler runs) can at worst make
    ``count`` one short, which nothing depends on.
    """

    def __init__(self, escalate_after_s: float = ESCALATE_AFTER_S) -> None:
        self.escalate_after_s = escalate_after_s
        self.count = 0
        self.first_signal: int | None = None
        self._first_at: float | None = None
        self._last_at: float | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        self.count += 1
        if self._first_at is None:
            self._first_at = now
            self.first_signal = signum
        self._last_at = now

    def install(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.restore()

    @property
    def requested(self) -> bool:
        """A stop signal arrived."""
        return self._first_at is not None

    @property
    def escalated(self) -> bool:
        """A further signal arrived after the first one's window: kill, do not drain."""
        first, last = self._first_at, self._last_at
        return first is not None and last is not None and last - first >= self.escalate_after_s

    @property
    def name(self) -> str:
        """The first signal's name (``SIGINT``), or an empty string when none arrived."""
        return "" if self.first_signal is None else signal.Signals(self.first_signal).name

    def checkpoint(self) -> None:
        """Raise ``Stopping`` when a stop was asked for (called between start-up steps)."""
        if self.requested:
            raise Stopping(self.name)


def never() -> bool:
    """The ``escalate``/``cancelled`` default: nothing asks for it."""
    return False
