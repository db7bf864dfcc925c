"""Where the gateway's P99 comes from: the machine or the gateway (issue 17, ``i17-tail``).

Runs the gateway of ``bench/gateway_proxy.py`` (one worker, every filter, the same route,
upstream, Redis and four bench users) under ``wrk -t1 -c64`` for a few rounds and prints,
beside wrk's latency percentiles up to P99.9, what each round did to the processes on the
machine:

- the gateway's CPU per request, its garbage collections per generation (``gc.get_stats``,
  written to a file four times a second by a thread the entry point below starts), its minor
  page faults per request;
- for the gateway, Redis and the upstream nginx: the share of the wall clock each spent
  runnable but waiting for a CPU (``/proc/PID/schedstat``) and their involuntary context
  switches (preempted);
- the machine's steal time (a hypervisor running someone else on our vCPUs).

A P99 that moves with the gateway's CPU per request and with steal or run-queue waits, while
no collection happened, is the machine's; one that moves with collections or with a setting
(``--env``) at equal CPU is the gateway's. Usage (needs ``wrk``, ``nginx`` and ``redis-cli`` on
PATH)::

    uv run python bench/gateway_tail.py [--rounds 3] [--duration 8] [--env NAME=value ...]
"""

# ruff: noqa: S603, S607 - a benchmark script running fixed tools (wrk, nginx) from PATH
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway_proxy import (
    BENCH_USERS,
    PATH,
    cpu_seconds,
    gateway_env,
    launch_gateway,
    start_upstream,
    stop_all,
    user_headers,
    write_keys_and_sign,
    wrk_args,
)

from urr_devstack.procs import RedisServer, free_port, wait_listening

#: wrk's percentiles printed by the script's ``done`` (in µs, as wrk keeps them).
PERCENTILES = (50, 90, 99, 99.9)
_DONE = (
    "done = function(summary, latency, requests)\n"
    + "".join(
        f'  io.write(string.format("P {p} %.3f\\n", latency:percentile({p}) / 1000))\n'
        for p in PERCENTILES
    )
    + "end\n"
)


def sched(pid: int) -> tuple[int, int]:
    """Nanoseconds runnable but waiting for a CPU, and involuntary context switches."""
    wait_ns = int(Path(f"/proc/{pid}/schedstat").read_text().split()[1])
    status = Path(f"/proc/{pid}/status").read_text()
    switches = int(re.search(r"nonvoluntary_ctxt_switches:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return wait_ns, switches


def minor_faults(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def steal_ticks() -> tuple[int, int]:
    """The machine's steal and total CPU ticks so far (``/proc/stat``)."""
    fields = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    return fields[7], sum(fields[:8])


#: ``python -c`` entry: the gateway, with a thread writing its collection counts to
#: ``$GC_COUNTS`` (the gateway does not export them).
_ENTRY = """
import gc, json, os, runpy, threading, time
def counts():
    while True:
        time.sleep(0.25)
        path = os.environ["GC_COUNTS"]
        with open(path + ".tmp", "w") as out:
            json.dump([s["collections"] for s in gc.get_stats()], out)
        os.replace(path + ".tmp", path)
threading.Thread(target=counts, daemon=True).start()
runpy.run_module("urr_gateway", run_name="__main__")
"""


def collections(path: Path) -> list[int]:
    """The gateway's collections so far, per generation (at most 0.25 s old)."""
    counts: list[int] = json.loads(path.read_text())
    return counts


def child_pids(parent: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True).stdout
    return [int(pid) for pid in found.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--duration", type=int, default=8)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--env", action="append", default=[], help="NAME=value for the gateway")
    options = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="urr-gateway-tail-"))
    processes: list[subprocess.Popen[bytes]] = []
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    redis.start()
    try:
        signed = write_keys_and_sign(work, BENCH_USERS)
        upstream_port = free_port()
        upstream = start_upstream(work, upstream_port)
        processes.append(upstream)
        wait_listening("127.0.0.1", upstream_port, 10, "upstream nginx")
        env = gateway_env(redis.url, f"http://127.0.0.1:{upstream_port}")
        env.update(setting.split("=", 1) for setting in options.env)
        access, entry = signed[0]
        ready = {"Cookie": f"access_token={access}", "x-queue-entry-token": entry}
        gc_counts = work / "gc.json"
        env["GC_COUNTS"] = str(gc_counts)
        port, pid, _ = launch_gateway(env, ready, processes, 1, entry=("-c", _ENTRY))
        redis_pid = int(
            subprocess.run(
                ["redis-cli", "-u", redis.url, "info", "server"], capture_output=True, text=True
            )
            .stdout.split("process_id:")[1]
            .split()[0]
        )
        watched = {"gateway": pid, "redis": redis_pid, "nginx": child_pids(upstream.pid)[0]}
        headers = [user_headers(a, e) for a, e in signed]
        url = f"http://127.0.0.1:{port}{PATH}"
        warm_up = wrk_args(options.connections, 2, url, headers)
        subprocess.run(warm_up, check=True, capture_output=True)
        print(f"gateway {url}, {options.connections} connections, {BENCH_USERS} users")
        for number in range(1, options.rounds + 1):
            run_round(number, options, url, headers, watched, gc_counts)
    finally:
        stop_all(processes)
        redis.stop()


def run_round(
    number: int,
    options: argparse.Namespace,
    url: str,
    headers: list[list[str]],
    watched: dict[str, int],
    gc_counts: Path,
) -> None:
    args = wrk_args(options.connections, options.duration, url, headers)
    script = Path(args[args.index("-s") + 1])
    script.write_text(script.read_text() + _DONE)
    gateway = watched["gateway"]
    time.sleep(0.3)  # the counts file is rewritten every 0.25 s
    before = {name: sched(pid) for name, pid in watched.items()}
    gc_before, faults_before, steal_before = (
        collections(gc_counts),
        minor_faults(gateway),
        steal_ticks(),
    )
    cpu_before, started = cpu_seconds([gateway]), time.monotonic()
    output = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    cpu, elapsed = cpu_seconds([gateway]) - cpu_before, time.monotonic() - started
    after = {name: sched(pid) for name, pid in watched.items()}
    faults_after, steal_after = minor_faults(gateway), steal_ticks()
    requests = int(re.search(r"(\d+) requests in", output).group(1))  # type: ignore[union-attr]
    latency = " ".join(
        f"P{match.group(1)} {float(match.group(2)):.2f}"
        for match in re.finditer(r"^P (\S+) (\S+)$", output, re.MULTILINE)
    )
    time.sleep(0.3)  # the counts file is rewritten every 0.25 s
    gc_after = collections(gc_counts)
    gcs = "/".join(str(b - a) for a, b in zip(gc_before, gc_after, strict=True))
    steal = (steal_after[0] - steal_before[0]) / max(steal_after[1] - steal_before[1], 1)
    print(
        f"round {number}: {requests / options.duration:,.0f} req/s, ms {latency}; gateway "
        f"{1e6 * cpu / requests:.0f} CPU µs/req, GC gen0/1/2 {gcs}, minor faults/req "
        f"{(faults_after - faults_before) / requests:.3f}; steal {100 * steal:.1f} %; "
        f"load {os.getloadavg()[0]:.2f}"
    )
    for name in watched:
        wait_ns = after[name][0] - before[name][0]
        switches = after[name][1] - before[name][1]
        print(
            f"    {name:8s} waiting for a CPU {100 * wait_ns / 1e9 / elapsed:4.1f} % of the run, "
            f"preempted {switches} times"
        )


if __name__ == "__main__":
    main()
