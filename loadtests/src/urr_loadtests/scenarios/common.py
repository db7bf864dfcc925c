"""What the scenarios share: their settings from the environment and the result log.

Plain functions only: no service code, so the scenarios measure the stack from outside.
"""

from __future__ import annotations

import gc
import json
import os
import random
import threading
import time
from collections.abc import Callable
from typing import Any, TextIO


def env(name: str, default: str) -> str:
    return os.environ.get(f"URR_LT_{name}", default)


def env_float(name: str, default: float) -> float:
    return float(env(name, str(default)))


class FixedRate:
    """One user's schedule: a call every ``1 / rate`` seconds, on a phase of its own.

    Locust's ``constant_throughput`` anchors every user's schedule at its spawn, and Locust
    spawns a second's users in one instant, so each period opened with all users' calls at once
    (median gap between calls 0.17 ms at 60 calls/s). That burst is the client's doing, yet it
    showed as server latency: P95 24-36 ms through the gateway, against ~4 ms when independent
    clients send at the same average rate. Here the schedule starts at a random point of the
    first period, and a user that falls behind resumes without a burst.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.period = 1 / rate
        self._clock = clock
        self._due = clock()

    def start(self) -> None:
        """Call from ``on_start``: waits a random part of one period, then starts the schedule."""
        # Locust patches time.sleep to yield to the other users.
        time.sleep(random.uniform(0, self.period))  # noqa: S311 - a phase, not a secret
        self._due = self._clock()

    def next_wait(self) -> float:
        now = self._clock()
        self._due = max(self._due + self.period, now)
        return self._due - now


class ArrivalSchedule:
    """Arrivals at ``rate`` a second, one by one: arrival ``i`` comes at a random point of its
    own slot ``[i, i + 1) / rate`` after the first.

    Locust's spawn rate cannot pace a crowd whose users stop after one pass: Locust starts a
    new user for every one that stopped, so the spawns speed up as arrivals finish. A crowd
    run at "12 a second" measured 22-25 a second (1,500 arrivals within 60-67 s) and one at
    "6 a second" 19. Each arrival now waits for its slot, whenever Locust started its user.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        draw: Callable[[], float] = random.random,
    ) -> None:
        if rate <= 0:
            raise ValueError("the arrival rate must be positive")
        self.rate = rate
        self._clock = clock
        self._draw = draw
        self._first: float | None = None

    def wait_for(self, index: int) -> float:
        """Seconds arrival ``index`` (0, 1, 2 ... in the order they were handed out) waits."""
        now = self._clock()
        if self._first is None:
            self._first = now
        due = self._first + (index + self._draw()) / self.rate
        return max(0.0, due - now)


class ResultLog:
    """Appends one JSON line per finished arrival (written whole, so lines never interleave).

    The file is opened on the first line and stays open; each line is flushed at once, so a
    Locust process that is killed leaves every finished arrival's line behind (writing a
    line took 1.5 % of Locust's CPU against a stub with an open and a close per line, 1.0 %
    without; py-spy, bench/locust_client_cpu.py).
    """

    def __init__(self, path: str | None) -> None:
        self._path = path
        self._lock = threading.Lock()
        self._handle: TextIO | None = None

    def write(self, record: dict[str, Any]) -> None:
        if not self._path:
            return
        line = json.dumps({**record, "logged_at": time.time()}) + "\n"
        with self._lock:
            if self._handle is None:
                self._handle = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._handle.write(line)
            self._handle.flush()

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None


#: Allocations between two young-generation collections in a crowd's Locust (Python's: 700).
GC_YOUNG_THRESHOLD = 10_000


def calm_collector() -> None:
    """Fewer garbage collections in the crowd's Locust process; no object lives differently.

    Python's collector ran every 700 allocations and now and then walked every object of
    the process (Locust, gevent, ~1,500 users and their clients): 0.27 s of a Locust's ~9 s
    in a 1,000-arrival crowd against a stub (bench/locust_client_cpu.py, timed with
    ``gc.callbacks``), 0.10 s with this. What is loaded by now (modules, Locust, gevent) is
    frozen out of the walks, and the young generation is collected every 10,000
    allocations. Reference counting still frees almost everything at once; only cycles
    wait a little longer.
    """
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


def answer_json(content: bytes | None) -> Any:
    """An answer's JSON, or None when it has no body or is not JSON (an HTML page).

    Parsed from the bytes: ``FastResponse.json()`` first decoded them to text with the
    charset the headers name (UTF-8 for every JSON answer of the suite), which
    ``json.loads`` does on bytes by itself. A body that starts with ``<`` (the edge's pages)
    is no JSON: it is not decoded only to fail on its first character.
    """
    if not content or content[:1] == b"<":
        return None
    try:
        return json.loads(content)
    except ValueError:  # UnicodeDecodeError too
        return None


def problem_code(body: bytes | str | None) -> str:
    """The ``code`` of a problem+json answer, or ``""``."""
    if not body:
        return ""
    try:
        data = json.loads(body)
    except ValueError:
        return ""
    return str(data.get("code", "")) if isinstance(data, dict) else ""
