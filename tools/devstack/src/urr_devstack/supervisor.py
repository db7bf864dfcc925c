"""Run the services under honcho, wait for them to be ready, and tell why they stopped.

honcho does the process work: one process group per service, output multiplexed with a name
prefix. Its main loop is replaced by ours (``_Manager.loop``): honcho's installs a signal
handler that prints and signals children from inside the handler, which deadlocked on our
printer's lock when the signal landed in a write (issue 22). Ours reads ``StopSignals``,
whose handler only records: the first stop signal (or a service exiting, or the watcher
failing) sends SIGTERM to every service group, a second signal or the drain timeout SIGKILL.
What is also ours: a watcher thread that polls each service's readiness URL (and, once
ready, that the servers we started are still alive), per-service log files, and the
distinction honcho does not make between "asked to stop" (exit 0) and "a service died" or
"never got ready" (exit 1).
"""

from __future__ import annotations

import collections
import functools
import os
import queue
import re
import sys
import threading
import time
import traceback
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
from urr_devstack.signals import StopSignals

#: Lines of each service's output kept in memory to show when it fails.
TAIL_LINES = 30
_SYSTEM = "system"
_STARTED = re.compile(r"^(?P<name>\S+) started \(pid=(?P<pid>\d+)\)")
_STOPPED = re.compile(r"^(?P<name>\S+) stopped \(rc=(?P<rc>-?\d+)\)")
#: How long services may take to stop after SIGTERM before they are killed (honcho's wait).
DRAIN_TIMEOUT_S = 5.0
#: After the SIGKILL, how long to wait for the services' output to end before giving up on
#: it (a grandchild outside the group may hold a pipe); ``run_services`` then stops by pid.
_AFTER_KILL_S = 5.0
#: Once every service process has exited, how long their remaining output may take to be
#: printed. A service that logged faster than we print leaves a backlog in honcho's reader
#: processes (its queue buffers without bound); a stop must not wait for all of it.
_OUTPUT_GRACE_S = 1.0


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

    signals: StopSignals
    stop: threading.Event = field(default_factory=threading.Event)
    failure: str | None = None

    def shutting_down(self, printer: ServicePrinter) -> bool:
        """A stop is under way (asked for, or honcho saw a service exit): watch no more."""
        return (
            self.stop.is_set()
            or self.signals.requested
            or self.failure is not None
            or printer.first_stopped is not None
        )


class _Manager(Manager):  # type: ignore[misc]
    """honcho's manager with a main loop whose signal handling cannot deadlock.

    Nothing here runs inside a signal handler: the loop wakes at least every 0.1 s (the
    event queue's timeout) and reads the flags the handler set.
    """

    returncode: int | None = None

    def __init__(
        self,
        printer: ServicePrinter,
        watch: _Watch,
        drain_timeout_s: float,
        output_grace_s: float = _OUTPUT_GRACE_S,
    ) -> None:
        super().__init__(printer=printer)
        self._watch = watch
        self._drain_timeout_s = drain_timeout_s
        self._output_grace_s = output_grace_s
        self._signalled: dict[str, int] = {}
        self._told = False
        self._stopping_since: float | None = None
        self._killed_at: float | None = None
        self._gone_at: float | None = None
        self._checked_at = 0.0

    def loop(self) -> None:
        self._start()
        while True:
            try:
                message = self.events.get(timeout=0.1)
            except queue.Empty:
                message = None
                if self._all_started() and self._all_stopped():
                    return
            if message is not None:
                self._handle(message)
            if self._stop_step(time.monotonic()):
                return

    def _stop_step(self, now: float) -> bool:
        """Start, escalate or finish a stop; True when the loop should end."""
        signals = self._watch.signals
        if signals.requested and not self._told:
            self._told = True
            self._system_print(f"{signals.name} received\n")
        if self._stopping_since is None and (
            signals.requested
            or self._watch.failure is not None
            or (self._all_started() and self._any_stopped())
        ):
            self._stopping_since = now
        if self._stopping_since is None:
            return False
        if self._killed_at is None and (
            signals.escalated or now - self._stopping_since > self._drain_timeout_s
        ):
            self._killed_at = now
        # Every pass: a service that started after the stop began gets its signal too.
        self._signal_all(signal_kill=self._killed_at is not None)
        if self._gone_at is None and now - self._checked_at >= 0.1:
            self._checked_at = now
            if self._all_exited():
                self._gone_at = now
        late_kill = self._killed_at is not None and now - self._killed_at > _AFTER_KILL_S
        late_output = self._gone_at is not None and now - self._gone_at > self._output_grace_s
        if late_kill or late_output:
            self._drop_output()
            return True
        return False

    def _all_exited(self) -> bool:
        """Every service process has exited, by /proc (before honcho's reader says so)."""
        return self._all_started() and all(
            "returncode" in process or cmdline(process["pid"]) is None
            for process in self._processes.values()
        )

    def _drop_output(self) -> None:
        """Give up on the output still queued: end honcho's reader processes.

        They ignore SIGINT/SIGTERM (honcho's choice) and would otherwise keep us waiting at
        exit, their queue's buffer flushing into a pipe nobody reads any more.
        """
        dropped = [
            name
            for name, process in self._processes.items()
            if "returncode" not in process and process.get("process") is not None
        ]
        if dropped:
            self._system_print(f"not waiting for the rest of the output of {', '.join(dropped)}\n")
        for process in self._processes.values():
            reader = process.get("process")
            if reader is not None and reader.is_alive():
                reader.kill()
        for process in self._processes.values():
            reader = process.get("process")
            if reader is not None:
                reader.join(timeout=1)

    def _handle(self, message: Any) -> None:
        if message.type == "line":
            self._printer.write(message)
        elif message.type == "start":
            self._processes[message.name]["pid"] = message.data["pid"]
            self._system_print(f"{message.name} started (pid={message.data['pid']})\n")
        elif message.type == "stop":
            code = message.data["returncode"]
            self._processes[message.name]["returncode"] = code
            self._system_print(f"{message.name} stopped (rc={code})\n")
            if self.returncode is None:
                self.returncode = code

    def _signal_all(self, *, signal_kill: bool) -> None:
        """SIGTERM (or SIGKILL) each running service's group, once per kind of signal."""
        level = 2 if signal_kill else 1
        for name, process in self._processes.items():
            pid = process.get("pid")
            if pid is None or "returncode" in process or self._signalled.get(name, 0) >= level:
                continue
            self._signalled[name] = level
            kind = "SIGKILL" if signal_kill else "SIGTERM"
            self._system_print(f"sending {kind} to {name} (pid {pid})\n")
            if signal_kill:
                self._procmgr.kill(pid)
            else:
                self._procmgr.terminate(pid)


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
    signals: StopSignals | None = None,
    drain_timeout_s: float = DRAIN_TIMEOUT_S,
    output_grace_s: float = _OUTPUT_GRACE_S,
) -> Outcome:
    """Run ``planned`` until SIGINT/SIGTERM, a service exits, or readiness times out.

    ``signals``: the caller's installed ``StopSignals`` (``up`` installs them for its whole
    run); without one, one is installed for the duration of this call. ``output_grace_s``:
    once every service has exited, how long their remaining output may still be printed.
    """
    printer = ServicePrinter(output or sys.stdout, log_dir, on_started)
    owned = signals is None
    stop_signals = StopSignals().install() if signals is None else signals
    watch = _Watch(signals=stop_signals)
    manager = _Manager(printer, watch, drain_timeout_s, output_grace_s)
    for service in planned:
        manager.add_process(
            service.name, service.command(python), env={**os.environ, **env}, cwd=str(cwd)
        )
    try:
        watching = functools.partial(
            _watch_services, planned, printer, watch, ready_timeout_s, on_ready, check_alive
        )
        watcher = threading.Thread(
            target=_stop_on_error,
            args=(watch, watching),
            name="urr-devstack-watch",
            daemon=True,
        )
        watcher.start()
        try:
            manager.loop()
        finally:
            watch.stop.set()
            watcher.join(timeout=2)
            # honcho has stopped every process when its loop returns; this covers the loop
            # failing instead (say, a closed stdout), so that no service outlives us.
            modules = {service.name: service.module for service in planned}
            stop_recorded(
                [ProcessRecord(n, pid, modules[n]) for n, pid in printer.pids().items()],
                timeout_s=0 if stop_signals.escalated else 5,
            )
            printer.close()
    finally:
        if owned:
            stop_signals.restore()
    signalled = stop_signals.requested
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


def _stop_on_error(watch: _Watch, body: Callable[[], None]) -> None:
    """Run the watcher thread's ``body``; an error of its own stops the stack.

    A watcher that died quietly left the services running with no ready banner and nothing
    watching them (issue 22: a failed save of the run file; a test waited 150 s for the
    banner). As a failure, the main loop stops every service and the traceback is the reason.
    """
    try:
        body()
    except Exception:
        _fail(watch, "the supervisor's watcher failed:\n" + traceback.format_exc().rstrip())


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
    # The main loop reads it within 0.1 s and stops every service, as for a signal.
    watch.failure = reason


def wait_for_signal(
    signals: StopSignals, check_alive: Callable[[], str | None] = lambda: None
) -> Outcome:
    """Block until SIGINT/SIGTERM (exit 0) or until a server we started dies (exit 1)."""
    checked = time.monotonic()
    while not signals.requested:
        # Short sleeps: the handler only records, so this loop is what notices a signal.
        time.sleep(0.1)
        if time.monotonic() - checked >= 0.5:
            checked = time.monotonic()
            dead = check_alive()
            if dead is not None:
                return Outcome(1, dead)
    return Outcome(0, "stopped on request")
