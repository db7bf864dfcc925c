"""The run file and the cleanup ``urr-devstack down`` does when ``up`` was killed outright."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from pathlib import Path

import pytest

from urr_devstack.runstate import ProcessRecord, RunState, cmdline, exit_code, stop_recorded


def test_devstack_run_state_round_trips(tmp_path: Path) -> None:
    state = RunState(pid=123, phase="ready", urls={"gateway": "http://127.0.0.1:3001"})
    state.servers.append(ProcessRecord("redis", 456, "redis-server"))
    state.save(tmp_path / "devstack.json")
    assert RunState.load(tmp_path / "devstack.json") == state
    (tmp_path / "broken.json").write_text("{not json")
    assert RunState.load(tmp_path / "broken.json") is None
    assert RunState.load(tmp_path / "missing.json") is None


def test_devstack_run_state_saved_from_two_threads_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The supervisor's watcher saves "ready" while its main thread saves a started service.

    The watcher is held between writing its temporary file and renaming it (as a loaded host
    may deschedule it there) until the main thread's save is done or 0.3 s have passed:
    without one save at a time, the main thread renamed the shared temporary file away and
    the watcher's rename raised, which killed the watcher before the ready banner.
    """
    path = tmp_path / "devstack.json"
    state = RunState(pid=123)
    main_saved = threading.Event()
    rename = os.replace

    def held_rename(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if threading.current_thread().name == "watcher":
            main_saved.wait(timeout=0.3)
        rename(source, target)

    monkeypatch.setattr(os, "replace", held_rename)
    errors: list[BaseException] = []

    def watcher() -> None:
        try:
            state.phase = "ready"
            state.save(path)
        except OSError as error:
            errors.append(error)

    thread = threading.Thread(target=watcher, name="watcher")
    thread.start()
    # The watcher has written its temporary file and waits to rename it.
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    deadline = time.monotonic() + 5
    while not temporary.exists() and time.monotonic() < deadline:
        time.sleep(0.001)
    state.services.append(ProcessRecord("gateway", 456, "urr_gateway"))
    state.save(path)
    main_saved.set()
    thread.join(timeout=5)
    assert errors == []
    assert RunState.load(path) == state


def test_devstack_leftovers_are_stopped_by_group_and_only_when_they_match() -> None:
    # A leftover "server" with a child in its process group, like a postmaster and backends.
    leftover = subprocess.Popen(["sh", "-c", "sleep 61 & exec sleep 62"], start_new_session=True)
    stranger = subprocess.Popen(["sleep", "63"], start_new_session=True)
    try:
        # Popen returns once sh runs; its own exec of "sleep 62" may come later on a busy machine,
        # and until then the record rightly does not match.
        _wait_for_cmdline(leftover.pid, "sleep 62")
        records = [
            ProcessRecord("server", leftover.pid, "sleep 62"),
            # Same pid as a live process but another program: a recycled pid is left alone.
            ProcessRecord("recycled", stranger.pid, "redis-server"),
        ]
        assert stop_recorded(records, timeout_s=5) == ["server"]
        assert leftover.wait(timeout=5) is not None
        assert stranger.poll() is None
    finally:
        for process in (leftover, stranger):
            if process.poll() is None:
                process.kill()
            process.wait(timeout=5)


def _wait_for_cmdline(pid: int, marker: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while marker not in (cmdline(pid) or ""):
        assert time.monotonic() < deadline, f"pid {pid} never ran {marker!r}"
        time.sleep(0.01)


def test_devstack_exit_code_of_a_zombie_is_read_from_proc() -> None:
    process = subprocess.Popen(["sh", "-c", "exit 7"])
    deadline = time.monotonic() + 5
    while cmdline(process.pid) is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    # Not yet reaped: a zombie, whose exit code /proc still shows.
    assert exit_code(process.pid) == 7
    assert process.wait(timeout=5) == 7
