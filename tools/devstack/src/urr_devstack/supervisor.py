"""Run the services under honcho, wait for them to be ready, and tell why they stopped.

honcho's ``Manager`` does the process work: one process group per service, output
multiplexed with a name prefix, SIGTERM to all on Ctrl-C/SIGTERM or when any one exits,
SIGKILL after 5 s. What is ours is around it: a watcher thread that polls each service's
readiness URL (and, once ready, that the servers we started are still alive), per-service
log files, and the distinction honcho does not make between "asked to stop" (exit 0) and
"a service died" or "never got ready" (exit 1).
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from honcho.manager import Manager
from honcho.printer import Printer

from urr_devstack.runstate import ProcessRecord, cmdline, exit_code, stop_recorded
from urr_devstack.services import PlannedService

#: Lines of each service's output kept in memory to show when it fails.
TAIL_LINES = 30
_SYSTEM = "system"
_STARTED = re.compile(r"^(?P<name>\S+) started \(pid=(?P<pid>\d+)\)")
_STOPPED = re.compile(r"^(?P<name>\S+) stopped \(rc=(?P<rc>-?\d+)\)")


@dataclass(frozen=True)
class Outcome:
    """How a run ended: the exit code for the command and a sentence saying why."""

    exit_code: int
    reason: str


class ServicePrinter(Printer):  # type: ignore[misc]
    """honcho's printer, plus a log file and an in-memory tail per service, plus pid tracking."""

    def __init__(
        self,
        output: TextIO,
        log_dir: Path,
        on_started: Callable[[str, int], None] = lambda name, pid: None,
    ) -> None:
        super().__init__(output)
        self._lock = threading.Lock()
        self._log_dir = log_dir
        self._files: dict[str, Any] = {}
        self._tails: dict[str, collections.deque[str]] = {}
        self._on_started = on_started
        self._pids: dict[str, int] = {}
        self.first_stopped: tuple[str, int] | None = None
        log_dir.mkdir(parents=True, exist_ok=True)

    def write(self, message: Any) -> None:
        with self._lock:
            super().write(message)
            text = message.data
            if isinstance(text, bytes):
                text = text.decode("utf-8", "replace")
            if message.name == _SYSTEM:
                self._system_event(text)
            elif message.name:
                self._record(message.name, text)

    def say(self, text: str) -> None:
        """A line of ours, printed like honcho's own (``system |`` prefix)."""
        from datetime import datetime

        from honcho.printer import Message

        self.write(Message("line", text + "\n", datetime.now(), _SYSTEM, None))

    def pids(self) -> dict[str, int]:
        """Each started service's pid, from honcho's "started" lines."""
        with self._lock:
            return dict(self._pids)

    def tail(self, name: str) -> list[str]:
        with self._lock:
            return list(self._tails.get(name, ()))

    def close(self) -> None:
        with self._lock:
            for handle in self._files.values():
                handle.close()
            self._files.clear()

    def _record(self, name: str, text: str) -> None:
        handle = self._files.get(name)
        if handle is None:
            handle = (self._log_dir / f"{name}.log").open("a", encoding="utf-8")
            self._files[name] = handle
        handle.write(text if text.endswith("\n") else text + "\n")
        handle.flush()
        tail = self._tails.setdefault(name, collections.deque(maxlen=TAIL_LINES))
        tail.extend(text.splitlines())

    def _system_event(self, text: str) -> None:
        started = _STARTED.match(text)
        if started:
            self._pids[started["name"]] = int(started["pid"])
            self._on_started(started["name"], int(started["pid"]))
        stopped = _STOPPED.match(text)
        if stopped and self.first_stopped is None:
            self.first_stopped = (stopped["name"], int(stopped["rc"]))


def is_ready(url: str, timeout_s: float = 1.0) -> bool:
    """The URL answers 200 (loopback only: never through a proxy from the environment)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout_s) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


@dataclass
class _Watch:
    """State the watcher thread shares with the main thread."""

    signals: SignalLog
    stop: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None

    def shutting_down(self, printer: ServicePrinter) -> bool:
        """A stop is under way (asked for, or honcho saw a service exit): watch no more."""
        return self.stop.is_set() or self.signals.seen() or printer.first_stopped is not None


def run_services(
    planned: Sequence[PlannedService],
    *,
    python: str,
    env: Mapping[str, str],
    cwd: Path,
    log_dir: Path,
    ready_timeout_s: float,
    on_ready: Callable[[ServicePrinter], None],
    check_alive: Callable[[], str | None] = lambda: None,
    on_started: Callable[[str, int], None] = lambda name, pid: None,
    output: TextIO | None = None,
) -> Outcome:
    """Run ``planned`` until SIGINT/SIGTERM, a service exits, or readiness times out."""
    printer = ServicePrinter(output or sys.stdout, log_dir, on_started)
    manager = Manager(printer=printer)
    for service in planned:
        manager.add_process(
            service.name, service.command(python), env={**os.environ, **env}, cwd=str(cwd)
        )
    with SignalLog() as signals:
        watch = _Watch(signals=signals)
        watcher = threading.Thread(
            target=_watch_services,
            args=(planned, printer, watch, ready_timeout_s, on_ready, check_alive),
            name="urr-devstack-watch",
            daemon=True,
        )
        watcher.start()
        try:
            manager.loop()
        finally:
            watch.stop.set()
            watcher.join(timeout=5)
            # honcho has stopped every process when its loop returns; this covers the loop
            # failing instead (say, a closed stdout), so that no service outlives us.
            modules = {service.name: service.module for service in planned}
            stop_recorded(
                [ProcessRecord(n, pid, modules[n]) for n, pid in printer.pids().items()],
                timeout_s=5,
            )
            printer.close()
        signalled = signals.seen()
    if watch.failure is not None:
        return Outcome(1, watch.failure)
    if signalled:
        return Outcome(0, "stopped on request")
    if printer.first_stopped is not None:
        name, code = printer.first_stopped
        tail = "\n".join(printer.tail(name)) or "(no output)"
        return Outcome(1, f"service {name} exited early (code {code}); its last lines:\n{tail}")
    return Outcome(1, "the services stopped for no reason we saw")


def _watch_services(
    planned: Sequence[PlannedService],
    printer: ServicePrinter,
    watch: _Watch,
    ready_timeout_s: float,
    on_ready: Callable[[ServicePrinter], None],
    check_alive: Callable[[], str | None],
) -> None:
    deadline = time.monotonic() + ready_timeout_s
    waiting = {s.name: s.health_url for s in planned if s.health_url is not None}
    while waiting:
        for name, url in list(waiting.items()):
            if is_ready(url):
                printer.say(f"{name} is ready")
                del waiting[name]
        if watch.shutting_down(printer):
            return
        problem = _dead_service(printer) or check_alive()
        if problem is not None:
            _fail(watch, problem)
            return
        if waiting and time.monotonic() > deadline:
            lines = [f"not ready within {ready_timeout_s:.0f}s: {', '.join(sorted(waiting))}"]
            for name in sorted(waiting):
                tail = printer.tail(name) or ["(no output)"]
                lines += [f"--- last lines of {name} ({waiting[name]}):", *tail]
            _fail(watch, "\n".join(lines))
            return
        watch.stop.wait(0.25)
    if watch.shutting_down(printer):
        return
    on_ready(printer)
    # Once ready: a service or a server we started dying takes the stack down rather than
    # leaving it half broken.
    while not watch.stop.wait(0.5):
        if watch.shutting_down(printer):
            return
        problem = _dead_service(printer) or check_alive()
        if problem is not None:
            _fail(watch, problem)
            return


def _dead_service(printer: ServicePrinter) -> str | None:
    """A service whose process has exited though honcho has not said so yet.

    honcho learns of an exit only at the end of the process's output, which never comes
    while a child the service left behind holds the pipe; /proc knows at once (a zombie).
    """
    for name, pid in printer.pids().items():
        if cmdline(pid) is None:
            code = exit_code(pid)
            how = f" (code {code})" if code is not None else ""
            tail = "\n".join(printer.tail(name)) or "(no output)"
            return f"service {name} exited early{how}; its last lines:\n{tail}"
    return None


def _fail(watch: _Watch, reason: str) -> None:
    watch.failure = reason
    # honcho stops everything on SIGTERM; asking through it keeps one shutdown path.
    os.kill(os.getpid(), signal.SIGTERM)


class SignalLog:
    """Tells whether SIGINT or SIGTERM reached this process while it was open.

    honcho installs its own handlers, so we learn about signals from Python's wakeup fd,
    which gets one byte per signal, written as the signal arrives, whatever the handler is.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received: set[int] = set()
        self._read_fd = self._write_fd = -1
        self._previous = -1

    def __enter__(self) -> SignalLog:
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.seen()
        signal.set_wakeup_fd(self._previous)
        os.close(self._read_fd)
        os.close(self._write_fd)
        self._read_fd = self._write_fd = -1

    def seen(self) -> bool:
        with self._lock:
            if self._read_fd >= 0:
                with contextlib.suppress(BlockingIOError):
                    self._received.update(os.read(self._read_fd, 1024))
            return bool(self._received & {signal.SIGINT, signal.SIGTERM})


def wait_for_signal(check_alive: Callable[[], str | None] = lambda: None) -> Outcome:
    """Block until SIGINT/SIGTERM (exit 0) or until a server we started dies (exit 1)."""
    stop = threading.Event()

    def request_stop(signum: int, frame: object) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            dead = check_alive()
            if dead is not None:
                return Outcome(1, dead)
        return Outcome(0, "stopped on request")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
