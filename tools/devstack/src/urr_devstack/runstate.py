"""``.urr/devstack.json``: what a running ``urr-devstack up`` started, for ``status`` and ``down``.

Written atomically whenever it changes and removed on a clean stop. Two threads write it
while the services start (the supervisor's main thread as each service starts, its watcher
when the stack is ready), so writes are serialised. When ``up`` was killed
outright (SIGKILL), ``down`` uses it to stop the processes that were left behind; a pid is
only signalled when ``/proc`` still shows the same program there, so a reused pid is left
alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

RUNFILE_NAME = "devstack.json"
#: One save at a time in this process. Concurrent saves shared the temporary file (named by
#: pid): the second rename found it gone and raised, and when that was the watcher's save of
#: the "ready" phase, the watcher thread died before the ready banner (issue 22). Taken
#: around the snapshot too, so the last save to finish holds the newest state.
_SAVE_LOCK = threading.Lock()


@dataclass
class ProcessRecord:
    name: str
    pid: int
    #: Part of ``/proc/<pid>/cmdline`` that identifies the program (guards against pid reuse).
    marker: str


@dataclass
class RunState:
    pid: int
    phase: str = "starting"
    servers: list[ProcessRecord] = field(default_factory=list)
    services: list[ProcessRecord] = field(default_factory=list)
    urls: dict[str, str] = field(default_factory=dict)

    def save(self, path: Path) -> None:
        with _SAVE_LOCK:
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{os.getpid()}")
            temporary.write_text(json.dumps(asdict(self), indent=2) + "\n")
            os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path) -> RunState | None:
        try:
            raw: dict[str, Any] = json.loads(path.read_text())
            return cls(
                pid=int(raw["pid"]),
                phase=str(raw.get("phase", "")),
                servers=[ProcessRecord(**item) for item in raw.get("servers", [])],
                services=[ProcessRecord(**item) for item in raw.get("services", [])],
                urls={str(k): str(v) for k, v in raw.get("urls", {}).items()},
            )
        except (OSError, ValueError, KeyError, TypeError):
            return None


def cmdline(pid: int) -> str | None:
    """The process's command line, or None when no such process runs (zombies count as gone)."""
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
        # The state letter follows the parenthesised name, which may itself contain spaces.
        if status.rsplit(")", 1)[1].split()[0] in ("Z", "X"):
            return None
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, IndexError):
        return None
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def descendants(root: int) -> dict[int, str]:
    """Every process below ``root`` (in other process groups too), with its command line."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                found[pid] = cmdline(pid) or "?"
                frontier.append(pid)
    return found


def exit_code(pid: int) -> int | None:
    """A zombie's exit code from ``/proc/<pid>/stat`` (negative: killed by that signal)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        # Field 52 of proc(5) (exit_code, in waitpid form); fields[0] here is field 3.
        status = int(fields[49])
    except (OSError, IndexError, ValueError):
        return None
    return -(status & 0x7F) if status & 0x7F else (status >> 8) & 0xFF


def is_alive(record: ProcessRecord) -> bool:
    line = cmdline(record.pid)
    return line is not None and record.marker in line


def stop_recorded(records: list[ProcessRecord], timeout_s: float = 10.0) -> list[str]:
    """SIGTERM each recorded process group still running its program, SIGKILL laggards."""
    alive = [record for record in records if is_alive(record)]
    for record in alive:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and any(is_alive(record) for record in alive):
        time.sleep(0.1)
    for record in alive:
        if is_alive(record):
            _signal_group(record.pid, signal.SIGKILL)
    return [record.name for record in alive]


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)
