"""CPU seconds each process of the local stack spends while a command runs (issue 22).

``uv run --frozen python bench/stack_cpu.py -- python -m urr_loadtests flash_crowd ...``
reads ``/proc/<pid>/stat`` of every process whose working folder is this repository (the
stack's services, servers and their worker processes) before and after the command, groups
them by what they run (``-m <module>``, ``moto_server``, ``dynalite``, ``tansu``; a worker
process counts with its parent) and prints CPU seconds per group, plus the command's own
(Locust and the runner, from its children's usage). Load average before and after too: the
machine is shared, so a figure means little without it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
REPO = Path(__file__).resolve().parents[1]
NAMES = {"moto_server": "moto", "dynalite": "dynalite", "tansu": "tansu", "redis-server": "redis"}
#: Modules run with ``-m`` that are named after what they serve.
MODULES = {"urr_devstack.moto_server": "moto"}


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of one process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / TICK


def _label(pid: int) -> str | None:
    try:
        if not os.readlink(f"/proc/{pid}/cwd").startswith(str(REPO)):
            return None
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    words = [word.decode(errors="replace") for word in argv if word]
    if "-m" in words[:-1]:
        module = words[words.index("-m") + 1]
        return MODULES.get(module, module)
    for word in words:
        for marker, name in NAMES.items():
            if marker in word:
                return name
    return ""  # a worker: named after its parent


def snapshot(skip: set[int]) -> dict[int, tuple[str, float]]:
    found: dict[int, tuple[int, str | None, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) not in skip:
            pid = int(entry.name)
            stat, label = _stat(pid), _label(pid)
            if stat is not None and label is not None:
                found[pid] = (stat[0], label, stat[1])
    named: dict[int, tuple[str, float]] = {}
    for pid, (parent, label, cpu) in found.items():
        while not label and parent in found:
            parent, label = found[parent][0], found[parent][1]
        named[pid] = (label or "other", cpu)
    return named


def main() -> int:
    command = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else sys.argv[1:]
    me = {os.getpid()}
    load_before = os.getloadavg()
    before = snapshot(me)
    started = time.monotonic()
    process = subprocess.run(command, check=False, cwd=REPO)  # noqa: S603 - the caller's command
    seconds = time.monotonic() - started
    after = snapshot(me | {process.returncode})
    load_after = os.getloadavg()
    groups: dict[str, float] = {}
    for pid, (label, cpu) in after.items():
        groups[label] = groups.get(label, 0.0) + cpu - before.get(pid, (label, 0.0))[1]
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    groups["the command (locust + runner)"] = children.ru_utime + children.ru_stime
    report = {
        "wall_s": round(seconds, 1),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in load_after],
        "cpu_s": {k: round(v, 1) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])},
        "cpu_s_total": round(sum(groups.values()), 1),
    }
    print(json.dumps(report, indent=2))
    return process.returncode


if __name__ == "__main__":
    raise SystemExit(main())
