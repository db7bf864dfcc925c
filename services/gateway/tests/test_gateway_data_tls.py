"""Start-up with data-store TLS settings the pod cannot satisfy."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_service_missing_its_ca_file_exits_2_with_the_variable_named(tmp_path: Path) -> None:
    """The gateway builds its Redis client at start: a CA file the pod does not have stops it
    with the message (exit status 2, as for any bad setting), not a traceback."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("URR_")}
    env |= {
        "URR_HTTP__PORT": "0",
        "URR_METRICS__ENABLED": "false",
        "URR_REDIS__URL": "rediss://127.0.0.1:1/0",
        "URR_REDIS__CA_FILE": str(tmp_path / "absent.crt"),
        "URR_HTTP__USE_UVLOOP": "false",
    }
    done = subprocess.run(
        [sys.executable, "-m", "urr_gateway"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert "URR_REDIS__CA_FILE=" in done.stderr
    assert "no such file" in done.stderr
    assert "Traceback" not in done.stderr
