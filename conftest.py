"""Fixtures shared by every test folder: real servers from the local stack's own code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hypothesis import settings

from urr_common import native

pytest_plugins = ["urr_devstack.testing"]

# Property tests judge what a function answers, never how fast: Hypothesis's default 200 ms
# deadline per example turned a slow example on a loaded CI machine (three xdist workers and
# their servers on two cores) into a failure that passed again with the same seed.
settings.register_profile("urr", deadline=None)
settings.load_profile("urr")


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """A test marked ``interpreted`` spies on or patches a class the mypyc build compiles (a
    compiled method cannot be replaced). With the build in use, it runs again in a child
    pytest with ``URR_NATIVE=0``, where it can: it must pass there, nothing is skipped."""
    if pyfuncitem.get_closest_marker("interpreted") is None or not native.status().active:
        return None
    child = subprocess.run(  # noqa: S603  # this interpreter, this test's node id
        [sys.executable, "-m", "pytest", "-q", "-p", "no:xdist", "-p", "no:cacheprovider",
         pyfuncitem.nodeid],
        cwd=pyfuncitem.config.rootpath,
        env={**os.environ, "URR_NATIVE": "0"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )  # fmt: skip
    if child.returncode != 0:
        pytest.fail(f"interpreted run (URR_NATIVE=0) failed:\n{child.stdout[-4000:]}")
    return True
