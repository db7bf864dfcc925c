"""honcho running real (small) service processes: ready, asked to stop, dying, never ready.

The real services may not exist yet on a branch, so these run tiny stand-ins through the same
``run_services`` that ``urr-devstack up`` uses, in a child process as ``up`` would run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from urr_devstack.procs import free_port
from urr_devstack.runstate import cmdline
from urr_devstack.services import PlannedService

pytestmark = pytest.mark.integration

FAKE_SERVICE = """
import http.server, os, subprocess, sys, time
from pathlib import Path

mode = os.environ["FAKE_MODE"]
pids = Path(os.environ["FAKE_PIDS"])
helper = subprocess.Popen(["sleep", "300"])  # a grandchild that must go too
pids.write_text(f"{os.getpid()} {helper.pid}")
print("fake starting", mode, os.environ.get("URR_COMMON"), flush=True)
if mode == "crash":
    time.sleep(0.5)
    print("boom", flush=True)
    sys.exit(3)
if mode == "worker":
    while True:
        time.sleep(1)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if mode == "ok" else 503)
        self.end_headers()

    def log_message(self, *args):
        pass

http.server.HTTPServer(("127.0.0.1", int(os.environ["URR_HTTP__PORT"])), Handler).serve_forever()
"""

DRIVER = """
import json, sys
from pathlib import Path
from urr_devstack.services import PlannedService
from urr_devstack.supervisor import run_services

config = json.loads(sys.argv[1])


def on_ready(printer):
    if config.get("ready_fails"):
        raise OSError("the run file could not be saved")
    printer.say("ALL READY")


outcome = run_services(
    [PlannedService(**service) for service in config["services"]],
    python=sys.executable,
    env={"URR_COMMON": "shared"},
    cwd=Path(config["cwd"]),
    log_dir=Path(config["logs"]),
    ready_timeout_s=config["timeout"],
    on_ready=on_ready,
)
print("OUTCOME", outcome.exit_code, outcome.reason, flush=True)
sys.exit(outcome.exit_code)
"""


def _service(tmp_path: Path, name: str, mode: str, with_port: bool = True) -> PlannedService:
    port = free_port() if with_port else None
    env = {"FAKE_MODE": mode, "FAKE_PIDS": str(tmp_path / f"{name}.pids")}
    if port is not None:
        env["URR_HTTP__PORT"] = str(port)
    health = f"http://127.0.0.1:{port}/health/ready" if port is not None else None
    return PlannedService(name, "fake_service", port, health, env)


def _start(
    tmp_path: Path, services: list[PlannedService], timeout_s: float, ready_fails: bool = False
) -> subprocess.Popen[str]:
    (tmp_path / "fake_service.py").write_text(FAKE_SERVICE)
    config = {
        "services": [asdict(service) for service in services],
        "cwd": str(tmp_path),
        "logs": str(tmp_path / "logs"),
        "timeout": timeout_s,
        "ready_fails": ready_fails,
    }
    return subprocess.Popen(
        [sys.executable, "-c", DRIVER, json.dumps(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
    )


def _read_until(process: subprocess.Popen[str], marker: str, timeout_s: float) -> str:
    assert process.stdout is not None
    seen = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if marker in line:
            return "".join(seen)
    raise AssertionError(f"{marker!r} not seen; output so far:\n{''.join(seen)}")


def _pids(tmp_path: Path, name: str) -> list[int]:
    deadline = time.monotonic() + 10
    path = tmp_path / f"{name}.pids"
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{name} never wrote its pids"
        time.sleep(0.05)
    return [int(pid) for pid in path.read_text().split()]


def _stop(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait(timeout=5)
    if process.stdout is not None:
        process.stdout.close()


def _failed_run(process: subprocess.Popen[str]) -> tuple[str, str]:
    """Wait for a run that must fail: ``(all its output, the reason after OUTCOME)``."""
    try:
        output, _ = process.communicate(timeout=30)
    finally:
        _stop(process)
    assert process.returncode == 1, output
    return output, output.split("OUTCOME", 1)[1]


@pytest.fixture(autouse=True)
def _no_strays(tmp_path: Path) -> Iterator[None]:
    """After the test and its assertions: kill any stand-in a failing run left behind."""
    yield
    for pid_file in tmp_path.glob("*.pids"):
        for pid in map(int, pid_file.read_text().split()):
            line = cmdline(pid) or ""
            if "fake_service" in line or "sleep 300" in line:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _assert_gone(pids: list[int]) -> None:
    deadline = time.monotonic() + 5
    while any(cmdline(pid) is not None for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [pid for pid in pids if cmdline(pid) is not None] == []


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_devstack_services_get_ready_and_stop_on_request(
    tmp_path: Path, stop_signal: signal.Signals
) -> None:
    services = [_service(tmp_path, "web", "ok"), _service(tmp_path, "worker", "worker", False)]
    process = _start(tmp_path, services, timeout_s=30)
    try:
        output = _read_until(process, "ALL READY", 30)
        assert "web is ready" in output
        pids = _pids(tmp_path, "web") + _pids(tmp_path, "worker")
        process.send_signal(stop_signal)
        rest, _ = process.communicate(timeout=20)
    finally:
        _stop(process)
    assert process.returncode == 0, output + rest
    assert "OUTCOME 0 stopped on request" in rest
    _assert_gone(pids)
    # The common environment and the service's own both reached it.
    assert "fake starting ok shared" in (tmp_path / "logs" / "web.log").read_text()


def test_devstack_a_service_dying_stops_the_rest_and_fails(tmp_path: Path) -> None:
    services = [_service(tmp_path, "web", "ok"), _service(tmp_path, "crasher", "crash")]
    process = _start(tmp_path, services, timeout_s=30)
    output, reason = _failed_run(process)
    assert "service crasher exited early (code 3)" in output
    assert "boom" in reason
    _assert_gone(_pids(tmp_path, "web") + _pids(tmp_path, "crasher"))


def test_devstack_a_service_never_ready_times_out_with_its_log(tmp_path: Path) -> None:
    services = [_service(tmp_path, "web", "ok"), _service(tmp_path, "slow", "unready")]
    process = _start(tmp_path, services, timeout_s=3)
    output, reason = _failed_run(process)
    assert "not ready within 3s: slow" in reason
    assert "fake starting unready" in reason
    assert "ALL READY" not in output
    _assert_gone(_pids(tmp_path, "web") + _pids(tmp_path, "slow"))


def test_devstack_a_failing_watcher_stops_the_stack_and_says_why(tmp_path: Path) -> None:
    """on_ready raising (a failed save of the run file, issue 22) used to end the watcher
    thread quietly: no ready banner, services running until someone gave up waiting."""
    services = [_service(tmp_path, "web", "ok"), _service(tmp_path, "worker", "worker", False)]
    process = _start(tmp_path, services, timeout_s=30, ready_fails=True)
    output, reason = _failed_run(process)
    assert "the supervisor's watcher failed" in reason
    assert "OSError: the run file could not be saved" in reason
    assert "ALL READY" not in output
    _assert_gone(_pids(tmp_path, "web") + _pids(tmp_path, "worker"))


def test_devstack_no_service_outlives_a_supervisor_whose_output_broke(tmp_path: Path) -> None:
    """The terminal goes away (a closed pipe): printing fails, yet every service is stopped."""
    services = [_service(tmp_path, "web", "ok"), _service(tmp_path, "worker", "worker", False)]
    process = _start(tmp_path, services, timeout_s=30)
    try:
        _read_until(process, "ALL READY", 30)
        pids = _pids(tmp_path, "web") + _pids(tmp_path, "worker")
        assert process.stdout is not None
        process.stdout.close()
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=20)
    finally:
        _stop(process)
    _assert_gone(pids)
