"""A pytest run killed outright (SIGKILL, no clean-up at all) leaves none of its servers.

The session's private Redis, PostgreSQL, moto and Tansu are started with the kernel's
parent-death signal, so they go when the pytest process goes, however it goes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from urr_devstack.runstate import cmdline, descendants

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(180)]

HOLDING_TEST = """
import os
import time
from pathlib import Path


def test_hold(redis_server, moto_endpoint, kafka_bootstrap, postgres_admin_dsn):
    Path(os.environ["HOLD_READY"]).write_text(postgres_admin_dsn)
    time.sleep(300)
"""


def test_devstack_a_sigkilled_pytest_session_leaves_no_server_running(tmp_path: Path) -> None:
    (tmp_path / "test_hold.py").write_text(HOLDING_TEST)
    ready = tmp_path / "ready"
    env = {key: value for key, value in os.environ.items() if key != "URR_TEST_POSTGRES_DSN"}
    # A private PostgreSQL too, not the machine's shared one.
    env.update({"HOLD_READY": str(ready), "URR_TEST_POSTGRES_PRIVATE": "1"})
    argv = [sys.executable, "-m", "pytest", "-p", "urr_devstack.testing", "-p", "no:cacheprovider"]
    argv += ["-q", "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base")]
    session = subprocess.Popen(
        [*argv, str(tmp_path / "test_hold.py")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    servers: dict[int, str] = {}
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            assert session.poll() is None, f"the held session ended early ({session.returncode})"
            assert time.monotonic() < deadline, "the held session's servers never came up"
            time.sleep(0.2)
        servers = descendants(session.pid)
        lines = " ".join(servers.values())
        for program in ("redis-server", "moto_server", "tansu", "postgres"):
            assert program in lines, f"{program} not among {servers}"
        session.send_signal(signal.SIGKILL)
        session.wait(timeout=10)
        deadline = time.monotonic() + 15
        left = servers
        while left and time.monotonic() < deadline:
            time.sleep(0.2)
            left = {pid: line for pid, line in servers.items() if cmdline(pid) == line}
        assert left == {}, f"left running after pytest was killed: {left}"
    finally:
        if session.poll() is None:
            session.kill()
            session.wait(timeout=10)
        for pid, line in servers.items():
            if cmdline(pid) == line:
                os.kill(pid, signal.SIGKILL)
        # What the killed session could not remove: its private PostgreSQL's folder.
        for line in servers.values():
            words = line.split()
            if "postgres" in words[0] and "-D" in words:
                data = Path(words[words.index("-D") + 1])
                if data.parent.name.startswith("urr-test-postgres-"):
                    shutil.rmtree(data.parent, ignore_errors=True)
