"""Importing a handler module does nothing: no environment reads, no clients, no files."""

from __future__ import annotations

import subprocess
import sys

PROBE = r"""
import os, sys, importlib

reads = []

PLUMBING = {"os", "_collections_abc", "collections.abc", "typing"}

class Watched(type(os.environ)):
    def _note(self, key):
        frame = sys._getframe(2)
        while frame is not None and frame.f_globals.get("__name__", "") in PLUMBING:
            frame = frame.f_back
        caller = frame.f_globals.get("__name__", "") if frame is not None else ""
        # One read by design: URR_NATIVE decides which code is imported at all, so it can only
        # be read at import (urr_common.native); nothing else may be.
        if caller.startswith("urr_") and (caller, key) != ("urr_common.native", "URR_NATIVE"):
            reads.append((caller, key))

    def __getitem__(self, key):
        self._note(key)
        return super().__getitem__(key)

    def __contains__(self, key):
        self._note(key)
        return super().__contains__(key)

os.environ.__class__ = Watched
import socket
real_connect = socket.socket.connect
def no_connect(self, address):
    raise AssertionError(f"network at import: {address}")
socket.socket.connect = no_connect
before = set(os.listdir("."))
for name in sys.argv[1:]:
    importlib.import_module(name)
assert set(os.listdir(".")) == before, "files created at import"
print(reads)
"""

MODULES = [
    "urr_vwr_lambda.api",
    "urr_vwr_lambda.advancer",
    "urr_vwr_lambda.edge",
    "urr_vwr_lambda.admin",
    "urr_vwr_lambda.local.apigw",
    "urr_vwr_lambda.local.edge",
    "urr_vwr_lambda.local.scheduler",
]


def test_handler_modules_do_nothing_at_import(tmp_path: object) -> None:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *MODULES],
        capture_output=True,
        text=True,
        check=False,
        cwd=str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
