"""What the scenarios share: their settings from the environment and the result log.

Plain functions only: no service code, so the scenarios measure the stack from outside.
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Any


def env(name: str, default: str) -> str:
    return os.environ.get(f"URR_LT_{name}", default)


def env_float(name: str, default: float) -> float:
    return float(env(name, str(default)))


class ResultLog:
    """Appends one JSON line per finished arrival (written whole, so lines never interleave)."""

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()

    def write(self, record: dict[str, Any]) -> None:
        if not self._path:
            return
        line = json.dumps({**record, "logged_at": time.time()}) + "\n"
        with self._lock, open(self._path, "a", encoding="utf-8") as handle:
            handle.write(line)


def problem_code(body: bytes | str | None) -> str:
    """The ``code`` of a problem+json answer, or ``""``."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return str(data.get("code", "")) if isinstance(data, dict) else ""
