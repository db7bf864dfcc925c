"""CPU of the Lambda emulator's hop to a container, per call, against a plain pipe (issue 22).

    uv run python bench/apigw_hop.py [--calls 3000]

The emulator hands each invocation to a one-worker ``ProcessPoolExecutor`` (spawn) per
container. This times that hop alone: an echo function given an API Gateway event the size of
an assign's, answered with a response of a check's size, both sides' CPU counted (this
process with its executor threads by ``time.process_time``, the worker from
``/proc/<pid>/stat``). In the same run: the emulator's ``PipeContainer`` that replaced the
pool, and the lightest possible hop (a bare ``multiprocessing.Pipe`` and a loop, no futures, no
reader thread). Sequential calls, one container: the figure is per call, not a throughput.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from urr_vwr_lambda.local.pipe_container import PipeContainer

EVENTS = Path(__file__).resolve().parents[1] / "services" / "vwr_lambda" / "tests" / "events"
TICK = os.sysconf("SC_CLK_TCK")
ANSWER = {
    "statusCode": 200,
    "headers": {"Content-Type": "application/json", "Cache-Control": "no-store"},
    "multiValueHeaders": {},
    "body": json.dumps(
        {"status": "waiting", "position": 1234, "servingCounter": 1000} | {"pad": "x" * 300}
    ),
    "isBase64Encoded": False,
}


def echo(event: dict[str, Any]) -> dict[str, Any]:
    return ANSWER


def worker_pid() -> int:
    return os.getpid()


def pipe_loop(conn: Connection) -> None:
    while True:
        event = conn.recv()
        if event is None:
            return
        conn.send(echo(event))


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    event = json.loads((EVENTS / "rest_assign.json").read_text())
    spawn = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(max_workers=1, mp_context=spawn)
    pool_pid = pool.submit(worker_pid).result()
    mine, theirs = spawn.Pipe()
    proc = spawn.Process(target=pipe_loop, args=(theirs,), daemon=True)
    proc.start()
    assert proc.pid is not None

    container = PipeContainer(spawn)
    container_pid = container.submit(worker_pid).result()

    def via_container() -> None:
        container.submit(echo, event).result()

    def via_pool() -> None:
        pool.submit(echo, event).result()

    def via_pipe() -> None:
        mine.send(event)
        mine.recv()

    results: dict[str, list[float]] = {"ProcessPoolExecutor": [], "PipeContainer": [], "Pipe": []}
    for _ in range(args.rounds):
        for name, fn, pid in (
            ("ProcessPoolExecutor", via_pool, pool_pid),
            ("PipeContainer", via_container, container_pid),
            ("Pipe", via_pipe, proc.pid),
        ):
            fn()
            started, started_child = time.process_time(), cpu_of(pid)
            for _ in range(args.calls):
                fn()
            spent = time.process_time() - started + cpu_of(pid) - started_child
            results[name].append(spent / args.calls * 1e6)
    mine.send(None)
    pool.shutdown()
    container.shutdown()
    load = os.getloadavg()
    print(f"CPU us per hop (both processes), {args.calls} calls x {args.rounds} rounds")
    print(f"load average {load[0]:.2f} {load[1]:.2f}")
    for name, samples in results.items():
        print(f"{name:<20} median {statistics.median(samples):>7.1f}  min {min(samples):>7.1f}")


if __name__ == "__main__":
    main()
