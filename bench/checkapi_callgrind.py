"""Check API: instructions per request in the server process, before and after in one run.

Run manually (never part of the test run; about 3 minutes per variant and round):

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/checkapi_callgrind.py [--before main]
        [--requests 300] [--rounds 1] [--keep DIR]

Why: the host this suite is measured on is shared, and its speed varies 2x over hours, so CPU
µs per request move with the load. The number of instructions the server runs per request
does not. Each variant's server (``checkapi_latency.py --serve``: the check API's own
listener, the default pipelined limiter, the caller check, metrics; ``@before``: the same
with ``--before``'s gateway sources) runs under valgrind's callgrind with instrumentation
off; the bench counts an idle stretch (timers, sweeps), then ``--requests`` requests sent
one after the other on one connection, each once the previous answer is in (the same
requests as ``checkapi_latency.py``: 10,000 keys, every 10th the hot key over its limit),
and prints (run - idle rate x its time) / requests.

Sequential, not open loop: under valgrind on a shared host an open-loop server falls behind
now and then and batches what queued, which changes the count. Here every request is alone
in its loop pass (one wake-up for its read, one for Redis's reply) whatever the speed: the
worst case per request, and the same for every variant. The limiter's
budget is raised to 5 s (``URR_CHECKAPI_BENCH_BUDGET_MS``): under valgrind a reply takes
milliseconds, and a decision that missed its budget would be a fallback, not a decision.
user-space instructions only: the kernel's share (the system calls) is not counted here;
``checkapi_latency.py`` prints the system calls and wake-ups per answer.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from checkapi_latency import request_bytes
from gateway_ab import counted
from gateway_proxy import gateway_source

from urr_devstack.procs import RedisServer, free_port, wait_listening

HERE = Path(__file__).resolve().parent


def sequential(port: int, payloads: list[bytes]) -> int:
    """Send each request once the previous answer is in (one connection): every request
    alone in the server's loop pass, however fast or slow the server runs. Answers 200."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buffer = b""
        for payload in payloads:
            sock.sendall(payload)
            while (end := buffer.find(b"\r\n\r\n")) < 0:
                buffer += sock.recv(65536)
            head = buffer[:end].lower()
            length = int(head.split(b"content-length: ")[1].split(b"\r\n")[0])
            while len(buffer) < end + 4 + length:
                buffer += sock.recv(65536)
            if not head.startswith(b"http/1.1 200"):
                raise RuntimeError(f"not a 200: {buffer[: end + 4 + length]!r}")
            buffer = buffer[end + 4 + length :]
    return len(payloads)


def measure(
    args: argparse.Namespace, redis: RedisServer, src: Path | None, work: Path, label: str
) -> float:
    redis.flushall()
    port = free_port()
    out = work / f"callgrind-{label}.out"
    argv = [
        "valgrind",
        "--tool=callgrind",
        "--instr-atstart=no",
        f"--callgrind-out-file={out}",
        sys.executable,
        str(HERE / "checkapi_latency.py"),
        "--serve",
        str(port),
        redis.url,
        "lean",
        "0",
        "0",
        str(work / f"report-{label}.json"),
        "--uvloop",
    ]
    env = {**os.environ, "URR_CHECKAPI_BENCH_BUDGET_MS": "5000"}
    if src is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(src), env.get("PYTHONPATH")) if p)
    server = subprocess.Popen(argv, env=env)  # noqa: S603
    try:
        wait_listening("127.0.0.1", port, 300, "check app under callgrind")
        sequential(port, [request_bytes(index) for index in range(200)])  # caches, connections
        payloads = [request_bytes(index) for index in range(args.requests)]
        idle, idle_s, _ = counted(server.pid, out, lambda: str(time.sleep(10)))
        busy, busy_s, answered = counted(server.pid, out, lambda: str(sequential(port, payloads)))
        print(f"  {label}: {args.requests} requests in {busy_s:.1f} s", flush=True)
        return (busy - idle / idle_s * busy_s) / max(1, int(answered))
    finally:
        server.terminate()
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", default="", help="git revision measured as 'before'")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--keep", default="", help="copy callgrind's dumps here")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="urr-bench-cg-"))
    variants: list[tuple[str, Path | None]] = []
    if args.before:
        src = gateway_source(args.before, work / "before")
        if src is None:
            parser.error(f"cannot extract {args.before}")
        variants.append((f"before ({args.before})", src))
    variants.append(("this tree", None))
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    redis.start()
    results: dict[str, list[float]] = {}
    try:
        for round_ in range(args.rounds):
            for index, (label, src) in enumerate(variants):
                per_request = measure(args, redis, src, work, f"{round_}-{index}")
                results.setdefault(label, []).append(per_request)
                print(f"{label}: {per_request:,.0f} instructions per request", flush=True)
    finally:
        redis.stop()
        if args.keep:
            Path(args.keep).mkdir(parents=True, exist_ok=True)
            for dump in work.glob("callgrind-*.out*"):
                shutil.copy(dump, Path(args.keep) / dump.name)
        shutil.rmtree(work, ignore_errors=True)
    print(f"\ncallgrind, {args.requests} requests one after the other (each alone):")
    first = None
    for label, values in results.items():
        mean = sum(values) / len(values)
        first = first or mean
        print(
            f"{label:<24} {mean:>10,.0f} instructions/request "
            f"({', '.join(f'{v:,.0f}' for v in values)}); {mean / first:.3f}x the first"
        )


if __name__ == "__main__":
    main()
