"""The crowd's proof of work: solving the waiting room's challenges as a script would.

An independent implementation of the published puzzle (``urr_vwr_lambda/proof_of_work.py``;
the load test never imports service code): the first ``counter`` such that
``SHA-256(SHA-256(challenge) || counter, 8 bytes big-endian)`` starts with ``bits`` zero bits.

Solving 16 bits takes a tenth of a second of Python; done on Locust's own thread it would
stall every other visitor's requests and show as server latency. So ``SolverPool`` hands the
work to a few solver processes (``python -m urr_loadtests.pow``, one challenge per line on
stdin, the counter back on stdout); under Locust the pipes are gevent's, so a visitor waiting
for its answer lets the others run. A crowd's visitors would each solve on their own machine.
"""

from __future__ import annotations

import hashlib
import itertools
import subprocess
import sys
import threading
from queue import Queue


def solve(challenge: str, bits: int) -> int:
    """The first counter that solves ``challenge`` at ``bits`` bits."""
    base = hashlib.sha256(hashlib.sha256(challenge.encode("ascii")).digest())
    below = 1 << (256 - bits)
    for counter in itertools.count():
        trial = base.copy()
        trial.update(counter.to_bytes(8, "big"))
        if int.from_bytes(trial.digest(), "big") < below:
            return counter
    raise AssertionError("unreachable")  # pragma: no cover


class SolverPool:
    """``size`` solver processes, started on first use, each serving one visitor at a time."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._idle: Queue[subprocess.Popen[bytes]] = Queue()
        self._started = 0
        self._lock = threading.Lock()

    def _start(self) -> None:
        with self._lock:
            if self._started >= self.size:
                return
            self._started += 1
        process = subprocess.Popen(
            [sys.executable, "-m", "urr_loadtests.pow"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._idle.put(process)

    def solve(self, challenge: str, bits: int) -> int:
        if self._idle.empty():
            self._start()
        process = self._idle.get()
        try:
            if process.stdin is None or process.stdout is None:
                raise RuntimeError("a solver process has no pipes")
            process.stdin.write(f"{challenge} {bits}\n".encode("ascii"))
            process.stdin.flush()
            answer = process.stdout.readline()
        finally:
            self._idle.put(process)
        if not answer.strip():
            raise RuntimeError("a proof-of-work solver process ended")
        return int(answer)

    def close(self) -> None:
        """Closes the solvers' stdin, which ends them, and reaps them."""
        while not self._idle.empty():
            process = self._idle.get()
            if process.stdin is not None:
                process.stdin.close()
            process.wait(timeout=10)
            if process.stdout is not None:
                process.stdout.close()


def main() -> None:
    """The solver process: ``<challenge> <bits>`` per line in, the counter per line out."""
    for line in sys.stdin:
        challenge, bits = line.split()
        sys.stdout.write(f"{solve(challenge, int(bits))}\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
