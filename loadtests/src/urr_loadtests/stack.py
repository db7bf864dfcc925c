"""Finding the local stack, or starting one with ``urr-devstack up`` and waiting for its banner."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

READY_BANNER = "urr-devstack: ready"
#: honcho prefixes each line with "HH:MM:SS name | "; the banner lines follow it.
_PREFIX = re.compile(r"^\d\d:\d\d:\d\d \S+\s+\| ")
_ENTRY = re.compile(r"^\s+([a-z0-9-]+)\s+(\S+)")
_ADMIN = re.compile(r"admin login: (\S+) / (\S+)")

DEFAULTS = {
    "vwr-edge": "http://127.0.0.1:8000",
    "gateway": "http://127.0.0.1:3001",
    "auth": "http://127.0.0.1:3005",
    "queue": "http://127.0.0.1:3007",
    "ticket": "http://127.0.0.1:3002",
    "vwr-apigw": "http://127.0.0.1:3010",
    "gateway-internal": "http://127.0.0.1:3011",
    "queue-internal": "http://127.0.0.1:5007",
    "postgres": "postgresql://postgres@127.0.0.1:5432/urr",
    "kafka": "127.0.0.1:9092",
}


@dataclass
class Stack:
    urls: dict[str, str]
    admin_email: str
    admin_password: str
    process: subprocess.Popen[str] | None = None
    log_lines: list[str] = field(default_factory=list)
    #: The stack's state folder (its keys and service credentials).
    state_dir: Path = field(
        default_factory=lambda: Path(os.environ.get("URR_DEVSTACK__STATE_DIR", ".urr"))
    )

    def url(self, name: str) -> str:
        return self.urls.get(name) or DEFAULTS[name]

    def secret(self, name: str) -> str:
        """A service credential the devstack made (``<state>/secrets/<name>``)."""
        return (self.state_dir / "secrets" / name).read_text().strip()

    def stop(self) -> None:
        """Stops the stack only when this runner started it."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def parse_banner(lines: list[str]) -> tuple[dict[str, str], str, str]:
    """Addresses and the admin account from the lines after the ready banner."""
    urls: dict[str, str] = {}
    email = password = ""
    for raw in lines:
        line = _PREFIX.sub("", raw.rstrip("\n"))
        admin = _ADMIN.search(line)
        if admin:
            email, password = admin.group(1), admin.group(2)
            continue
        entry = _ENTRY.match(line)
        if (entry and "://" in entry.group(2)) or (entry and entry.group(1) == "kafka"):
            urls[entry.group(1)] = entry.group(2)
    return urls, email, password


def is_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health/ready", timeout=2) as answer:  # noqa: S310
            return bool(answer.status == 200)
    except OSError:
        return False


def _devstack_command() -> list[str]:
    script = Path(sys.executable).with_name("urr-devstack")
    return [str(script), "up"] if script.exists() else ["uv", "run", "urr-devstack", "up"]


def moved_internal_listeners() -> dict[str, str]:
    """The banner does not list the internal listeners: they follow the moved ports."""
    moved_ports = json.loads(os.environ.get("URR_DEVSTACK__SERVICE_PORTS", "{}") or "{}")
    return {
        listener: f"http://127.0.0.1:{moved_ports[listener]}"
        for listener in ("gateway-internal", "queue-internal")
        if listener in moved_ports
    }


def find_or_start(repo_root: Path, *, start: bool, timeout_s: float = 240) -> Stack:
    """The running stack (default ports, admin password from ``.urr/``) or a new one."""
    state_dir = Path(os.environ.get("URR_DEVSTACK__STATE_DIR", repo_root / ".urr"))
    described = os.environ.get("URR_LT_STACK")
    if described:
        # A stack someone else started and described (the tests' private one): used, not owned.
        data = json.loads(Path(described).read_text())
        return Stack(
            {**DEFAULTS, **data["urls"]},
            data["admin_email"],
            data["admin_password"],
            state_dir=Path(data.get("state_dir", state_dir)),
        )
    moved = any(key.startswith("URR_DEVSTACK__") and "PORT" in key for key in os.environ)
    if not moved and all(is_ready(DEFAULTS[name]) for name in ("gateway", "queue", "ticket")):
        password_file = state_dir / "admin-password"
        password = password_file.read_text().strip() if password_file.exists() else ""
        return Stack(dict(DEFAULTS), "admin@urr.local", password, state_dir=state_dir)
    if not start:
        raise RuntimeError("no stack answers on the default ports and --no-start was given")
    process = subprocess.Popen(  # noqa: S603 - our own console script
        _devstack_command(),
        cwd=repo_root,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    if process.stdout is None:  # never: stdout is a pipe
        raise RuntimeError("urr-devstack's output is not readable")
    log_path = state_dir / "logs" / "loadtest-devstack.out"
    banner: list[str] = []
    seen_banner = False
    deadline = time.monotonic() + timeout_s
    tail: list[str] = []
    for line in process.stdout:
        tail = [*tail[-39:], line]
        if READY_BANNER in line:
            seen_banner = True
        if seen_banner:
            banner.append(line)
            if "admin login:" in line:
                break
        if time.monotonic() > deadline:
            break
    if not seen_banner or process.poll() is not None:
        process.kill()
        raise RuntimeError("urr-devstack up did not become ready:\n" + "".join(tail))
    urls, email, password = parse_banner(banner)
    urls.update(moved_internal_listeners())
    stack = Stack({**DEFAULTS, **urls}, email, password, process, state_dir=state_dir)
    threading.Thread(target=_drain, args=(process, log_path), daemon=True).start()
    return stack


def _drain(process: subprocess.Popen[str], log_path: Path) -> None:
    """Keeps reading the stack's output so it never blocks on a full pipe."""
    if process.stdout is None:  # never: stdout is a pipe
        raise RuntimeError("urr-devstack's output is not readable")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "a", encoding="utf-8") as log:
        for line in process.stdout:
            log.write(line)
