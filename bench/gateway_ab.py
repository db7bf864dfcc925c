"""The gateway of another git revision against this tree's, alternating, on a shared machine.

``gateway_proxy.py`` runs every reference target once (nginx, the bare proxies) and the
gateways a few times; on a machine where neighbours run their own loads the gateways' req/s
then moves with the neighbours more than with the code. This bench runs only the two
gateways (every filter, one worker, the same upstream nginx, JWKS and Redis as
``gateway_proxy.py``), in turn, ``--rounds`` times, and prints each round and the median of
the per-request CPU time (the gateway process's user + system time over the requests
answered: what a change in the code moves, whatever share of a core the gateway got), req/s
and P99 side by side, with the load average of every round. The limiter's decisions that
fell open (its Redis budget missed on a starved machine: cheaper requests) are printed too,
per gateway, since they make a run cheaper than a quiet one.

Usage (needs ``wrk`` and ``nginx`` on PATH)::

    PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/gateway_ab.py --before main \
        [--rounds 6] [--duration 6] [--connections 64]
"""

# ruff: noqa: S603, S607 - a benchmark script running fixed tools (wrk, nginx, valgrind) from PATH
from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gateway_proxy import (
    BENCH_USERS,
    PATH,
    HeaderSets,
    gateway_env,
    gateway_source,
    launch_gateway,
    profile,
    run_wrk,
    start_upstream,
    stop_all,
    user_headers,
    write_keys_and_sign,
    wrk_args,
)

from urr_devstack.procs import RedisServer, free_port, wait_listening


def metric_sum(metrics_port: int, prefix: str, timeout_s: float = 5) -> float:
    """The sum of the gateway's samples whose line starts with ``prefix`` (0 if none)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            text = answer.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(prefix)
    )


def degraded(metrics_port: int) -> float:
    """Limiter decisions that fell open so far (0 if the gateway has no such metric)."""
    return metric_sum(metrics_port, "urr_ratelimit_degraded_decisions_total{")


def answered(metrics_port: int) -> int:
    """Requests the gateway has answered so far, by its own counter (scraped while its
    instructions are not being counted)."""
    return int(metric_sum(metrics_port, "urr_http_requests_total{", timeout_s=60))


def callgrind(command: str, pid: int) -> None:
    subprocess.run(
        ["callgrind_control", command, str(pid)], check=True, capture_output=True, timeout=120
    )


def counted(pid: int, out: Path, during: Callable[[], str]) -> tuple[int, float, str]:
    """Instructions the gateway ran while ``during`` ran (zeroed, counted, dumped), the
    seconds it took and what it returned."""
    before = set(out.parent.glob(f"{out.name}*"))
    callgrind("-z", pid)
    callgrind("--instr=on", pid)
    started = time.monotonic()
    result = during()
    elapsed = time.monotonic() - started
    callgrind("--instr=off", pid)
    callgrind("-d", pid)
    deadline = time.monotonic() + 60
    while not (dumps := set(out.parent.glob(f"{out.name}*")) - before):
        if time.monotonic() > deadline:
            raise RuntimeError("callgrind wrote no dump")
        time.sleep(0.2)
    time.sleep(0.5)
    dump = max(dumps, key=lambda path: path.stat().st_mtime)
    totals = re.search(r"^totals: (\d+)", dump.read_text(), re.MULTILINE)
    if totals is None:
        raise RuntimeError(f"no totals in {dump}")
    return int(totals.group(1)), elapsed, result


def instructions_per_request(
    gateway: tuple[str, int, int, int], out: Path, options: argparse.Namespace, headers: HeaderSets
) -> tuple[float, int, float]:
    """One round under callgrind: the instructions of an idle stretch as long as the run
    (timers, sweeps: what the gateway spends per second whatever comes), then of the run;
    (instructions per request net of the idle rate, requests, idle instructions per s).
    Under valgrind a request costs ~50x its time, so the per-second costs would otherwise
    weigh on a few hundred requests. The few requests in flight at either edge of the run
    are the remaining error (at most ``--connections`` of them): the requests are counted by
    the gateway's own metric, since wrk leaves out those that outlive its timeout."""
    _, port, pid, metrics_port = gateway
    url = f"http://127.0.0.1:{port}{PATH}"
    args = wrk_args(options.connections, options.duration, url, headers, latency=False)
    args[-1:-1] = ["--timeout", "60s"]
    idle, idle_s, _ = counted(pid, out, lambda: str(time.sleep(options.duration)))
    rate = idle / idle_s

    def load() -> str:
        return subprocess.run(args, check=True, capture_output=True, text=True).stdout

    first = answered(metrics_port)
    busy, busy_s, _ = counted(pid, out, load)
    requests = answered(metrics_port) - first
    if not requests:
        raise RuntimeError("no requests answered")
    return (busy - rate * busy_s) / requests, requests, rate


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", default="main", help="git revision run as 'before'")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--duration", type=int, default=6)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for both")
    parser.add_argument(
        "--profile-seconds", type=int, default=0, help="then py-spy each gateway this long"
    )
    parser.add_argument("--keep-profiles", default="", help="copy the raw py-spy stacks here")
    parser.add_argument(
        "--keep-callgrind", default="", help="copy callgrind's dumps here (callgrind_annotate)"
    )
    parser.add_argument(
        "--callgrind",
        action="store_true",
        help="run both gateways under valgrind's callgrind and count instructions per "
        "request instead of CPU time (independent of what else runs; set --connections "
        "low, e.g. 4, and --duration long, e.g. 20, since the gateway runs ~50x slower)",
    )
    options = parser.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not on PATH (apt-get install wrk nginx)")
    work = Path(tempfile.mkdtemp(prefix="urr-bench-gateway-ab-"))
    processes: list = []
    redis = RedisServer(port=free_port(), workdir=work / "redis")
    try:
        users = write_keys_and_sign(work, BENCH_USERS)
        access_token, entry_token = users[0]
        upstream_port = free_port()
        processes.append(start_upstream(work, upstream_port))
        wait_listening("127.0.0.1", upstream_port, 10, "upstream nginx")
        redis.start()
        upstream = f"http://127.0.0.1:{upstream_port}"
        base_env = gateway_env(redis.url, upstream)
        base_env.update(item.split("=", 1) for item in options.env)
        headers = [user_headers(*user) for user in users]
        ready = {"Cookie": f"access_token={access_token}", "x-queue-entry-token": entry_token}
        before_src = gateway_source(options.before, work / "before")
        if before_src is None:
            sys.exit(f"cannot extract {options.before}")
        gateways = []
        for label, src in ((f"before ({options.before})", before_src), ("this tree", None)):
            prefix: tuple[str, ...] = ()
            if options.callgrind:
                out = work / f"callgrind-{len(gateways)}.out"
                prefix = (
                    "valgrind",
                    "--tool=callgrind",
                    "--instr-atstart=no",
                    f"--callgrind-out-file={out}",
                )
            port, pid, metrics_port = launch_gateway(
                base_env, ready, processes, 1, src, prefix, 600 if options.callgrind else 90
            )
            gateways.append((label, port, pid, metrics_port))
        if options.callgrind:
            count_instructions(gateways, work, options, headers)
            return
        rows: dict[str, list[tuple[float, float, float]]] = {g[0]: [] for g in gateways}
        print(f"wrk -t1 -c{options.connections} -d{options.duration}s, {PATH}, alternating")
        print(
            f"{'round':5} {'gateway':22} {'req/s':>7} {'P99 ms':>7} {'CPU us/req':>10} "
            f"{'fell open':>9}  load average"
        )
        for number in range(1, options.rounds + 1):
            order = gateways if number % 2 else list(reversed(gateways))
            for label, port, pid, metrics_port in order:
                load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
                opened = degraded(metrics_port)
                result = run_wrk(
                    label,
                    f"http://127.0.0.1:{port}{PATH}",
                    options.duration,
                    options.connections,
                    headers,
                    [pid],
                )
                opened = degraded(metrics_port) - opened
                rows[label].append(
                    (result.cpu_us_per_request, result.requests_per_s, result.p99_ms)
                )
                print(
                    f"{number:5} {label:22} {result.requests_per_s:7.0f} {result.p99_ms:7.2f} "
                    f"{result.cpu_us_per_request:10.1f} {opened:9.0f}  {load}"
                )
        print("\nmedians over the rounds (CPU us/req, min, req/s, P99 ms):")
        for label, values in rows.items():
            cpu = [v[0] for v in values]
            print(
                f"  {label:22} {statistics.median(cpu):7.1f} {min(cpu):7.1f} "
                f"{statistics.median(v[1] for v in values):8.0f} "
                f"{statistics.median(v[2] for v in values):7.2f}"
            )
        for label, port, pid, _ in gateways if options.profile_seconds else []:
            raw = work / f"profile-{'before' if label.startswith('before') else 'after'}.txt"
            print(f"\n{label}, py-spy under the same load:")
            url = f"http://127.0.0.1:{port}{PATH}"
            print(profile(pid, url, options.profile_seconds, options.connections, headers, raw))
            if options.keep_profiles:
                Path(options.keep_profiles).mkdir(parents=True, exist_ok=True)
                shutil.copy(raw, Path(options.keep_profiles) / raw.name)
    finally:
        stop_all(processes)
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)


def count_instructions(
    gateways: list[tuple[str, int, int, int]],
    work: Path,
    options: argparse.Namespace,
    headers: HeaderSets,
) -> None:
    print(f"callgrind, wrk -t1 -c{options.connections} -d{options.duration}s, {PATH}, alternating")
    print(
        f"{'round':5} {'gateway':22} {'instructions/request':>20} {'requests':>8} "
        f"{'idle instr/s':>14}  load"
    )
    rows: dict[str, list[float]] = {g[0]: [] for g in gateways}
    for number in range(1, options.rounds + 1):
        order = gateways if number % 2 else list(reversed(gateways))
        for label, port, pid, metrics_port in order:
            index = [g[0] for g in gateways].index(label)
            load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
            per_request, requests, idle_rate = instructions_per_request(
                (label, port, pid, metrics_port), work / f"callgrind-{index}.out", options, headers
            )
            rows[label].append(per_request)
            print(
                f"{number:5} {label:22} {per_request:20,.0f} {requests:8} "
                f"{idle_rate:14,.0f}  {load}"
            )
    print("\nmedian instructions per request:")
    base = statistics.median(next(iter(rows.values())))
    for label, values in rows.items():
        median = statistics.median(values)
        print(f"  {label:22} {median:14,.0f}  ({median / base:.3f}x)")
    if options.keep_callgrind:
        Path(options.keep_callgrind).mkdir(parents=True, exist_ok=True)
        for dump in work.glob("callgrind-*.out*"):
            shutil.copy(dump, Path(options.keep_callgrind) / dump.name)


if __name__ == "__main__":
    main()
