"""CPU per warm Lambda invocation with and without the EMF metrics line (issue 22).

    uv run python bench/vwr_emf_line.py [--calls 2000]

The Lambda emulator's containers now drop powertools' per-invocation EMF line unless
``POWERTOOLS_METRICS_DISABLED=false`` is set (``local/apigw.py``, ``quiet_container``). This
times the container's side of that line: the handler runs on the in-memory store of
``vwr_handlers.py`` (so DynamoDB is not in the figure), with stdout sent at the descriptor
level into a pipe that a thread drains, as a container's stdout goes to the emulator. Rounds
alternate lines on and off in one process (``is_metrics_disabled`` reads the environment on
every flush); CPU is ``time.process_time``, draining thread included. The relay of each line
by the devstack supervisor is another process's CPU: part 2 times its printer
(``ServicePrinter.write``: terminal, log file, tail) per line, a lower bound of the relay
(honcho's reader thread and queue per line come on top).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vwr_handlers import event, warm_handler


def cpu_us_per_call(fn: Callable[[], Any], calls: int) -> float:
    started = time.process_time()
    for _ in range(calls):
        fn()
    return (time.process_time() - started) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    _, store, handler = warm_handler(Path(tempfile.mkdtemp()))  # set-up prints nothing
    base_assign = event("rest_assign.json")

    def assign_new() -> None:
        e = copy.deepcopy(base_assign)
        e["body"] = json.dumps({"requestId": str(uuid.uuid4())})
        handler(e, None)

    waiting = str(uuid.uuid4())
    e = copy.deepcopy(base_assign)
    e["body"] = json.dumps({"requestId": waiting})
    handler(e, None)
    store.events["evt-1"] = replace(store.events["evt-1"], serving_counter=0)
    check = event("rest_check.json", path=f"/vwr/check/evt-1/{waiting}")

    # The container's stdout: a pipe another thread drains.
    read_end, write_end = os.pipe()
    saved = os.dup(1)
    lines = [0]

    def drain() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for _ in pipe:
                lines[0] += 1

    threading.Thread(target=drain, daemon=True).start()
    sys.stdout.flush()
    os.dup2(write_end, 1)
    cases: list[tuple[str, Callable[[], Any]]] = [
        ("check (waiting)", lambda: handler(check, None)),
        ("assign (new)", assign_new),
    ]
    results: dict[tuple[str, str], list[float]] = {}
    try:
        for name, fn in cases:
            for _ in range(args.rounds):
                for mode, disabled in (("lines on", "false"), ("lines off", "true")):
                    os.environ["POWERTOOLS_METRICS_DISABLED"] = disabled
                    fn()
                    results.setdefault((name, mode), []).append(cpu_us_per_call(fn, args.calls))
            sys.stdout.flush()
    finally:
        os.dup2(saved, 1)
    load = os.getloadavg()
    print(f"CPU us per warm invocation, {args.calls} calls x {args.rounds} alternating rounds")
    print(f"load average {load[0]:.2f} {load[1]:.2f}; {lines[0]} EMF lines drained")
    print(f"{'case':<18} {'lines on med':>13} {'off med':>9} {'on min':>8} {'off min':>8}")
    for name, _ in cases:
        on, off = results[(name, "lines on")], results[(name, "lines off")]
        print(
            f"{name:<18} {statistics.median(on):>13.1f} {statistics.median(off):>9.1f}"
            f" {min(on):>8.1f} {min(off):>8.1f}"
        )

    relay_us_per_line(args.calls)


def relay_us_per_line(calls: int) -> None:
    from datetime import datetime

    from honcho.printer import Message

    from urr_devstack.supervisor import ServicePrinter

    line = (
        '{"_aws":{"Timestamp":1796571681013,"CloudWatchMetrics":[{"Namespace":"URR/VWR",'
        '"Dimensions":[["service"]],"Metrics":[{"Name":"Check","Unit":"Count"}]}]},'
        '"service":"urr-vwr","Check":[1.0]}\n'
    )
    with open(os.devnull, "w") as terminal, tempfile.TemporaryDirectory() as logs:
        printer = ServicePrinter(terminal, Path(logs))
        samples = [
            cpu_us_per_call(
                lambda: printer.write(Message("line", line, datetime.now(), "vwr-apigw", None)),
                calls,
            )
            for _ in range(5)
        ]
    print(f"supervisor printer, CPU us per relayed line: median {statistics.median(samples):.1f}")


if __name__ == "__main__":
    main()
