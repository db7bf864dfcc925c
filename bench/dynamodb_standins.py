"""moto against dynalite for the Tier-1 hot call: ``ADD nextPosition`` (issue 22).

Run: ``make dynalite && uv run --frozen python bench/dynamodb_standins.py [--calls 2400]``

Starts a fresh moto server and a fresh dynalite (in-memory) on free loopback ports, side by
side in the same run, and for each: ``calls`` sequential ``UpdateItem ADD`` with
``ReturnValues=ALL_NEW`` (what ``reserve_position`` sends, condition included), then the same
number spread over 8 threads. Prints calls/s, median/P95/P99 latency, the server's CPU time
per call (from /proc, user+system of the server process), and increments lost (the counter's
final value against the calls that returned success). Asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

from urr_devstack.procs import ServerProcess, dynalite_server, free_port, moto_server

THREADS = 8


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # utime and stime are fields 14 and 15 of proc(5); fields[0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / ticks


def _client(url: str) -> Any:
    return boto3.session.Session().client(
        "dynamodb",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bench",
        aws_secret_access_key="bench",  # noqa: S106 - stand-ins take any
        config=Config(retries={"max_attempts": 1}, max_pool_connections=THREADS * 2),
    )


def _setup(client: Any, table: str) -> None:
    client.create_table(
        TableName=table,
        KeySchema=[{"AttributeName": "eventId", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "eventId", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    client.get_waiter("table_exists").wait(TableName=table)
    client.put_item(
        TableName=table,
        Item={"eventId": {"S": "bench"}, "isActive": {"BOOL": True}, "nextPosition": {"N": "0"}},
    )


def _add(client: Any, table: str) -> Callable[[], bool]:
    def call() -> bool:
        try:
            client.update_item(
                TableName=table,
                Key={"eventId": {"S": "bench"}},
                UpdateExpression="ADD nextPosition :one SET updatedAt = :now",
                ConditionExpression="isActive = :true",
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":now": {"N": str(time.time_ns() // 1_000_000)},
                    ":true": {"BOOL": True},
                },
                ReturnValues="ALL_NEW",
            )
        except Exception:
            return False
        return True

    return call


def _counter(client: Any, table: str) -> int:
    item = client.get_item(TableName=table, Key={"eventId": {"S": "bench"}}, ConsistentRead=True)
    return int(item["Item"]["nextPosition"]["N"])


def _run(call: Callable[[], bool], calls: int, threads: int) -> tuple[list[float], int, float]:
    latencies: list[float] = []
    ok = [0]
    lock = threading.Lock()
    per_thread = calls // threads

    def worker() -> None:
        mine: list[float] = []
        good = 0
        for _ in range(per_thread):
            start = time.perf_counter()
            good += call()
            mine.append(time.perf_counter() - start)
        with lock:
            latencies.extend(mine)
            ok[0] += good

    started = time.perf_counter()
    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    return latencies, ok[0], time.perf_counter() - started


def _line(
    name: str, mode: str, latencies: list[float], ok: int, wall: float, cpu: float, lost: int
) -> str:
    ms = sorted(latency * 1000 for latency in latencies)
    p95 = ms[min(len(ms) - 1, int(len(ms) * 0.95))]
    p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
    return (
        f"{name:<9} {mode:<10} {len(ms) / wall:8.0f}/s  median {statistics.median(ms):6.2f} ms"
        f"  p95 {p95:6.2f}  p99 {p99:6.2f}  server CPU {cpu / len(ms) * 1000:5.2f} ms/call"
        f"  ok {ok}/{len(ms)}  lost {lost}"
    )


def bench(name: str, server: ServerProcess, calls: int) -> list[str]:
    server.start()
    lines = []
    try:
        assert server.pid is not None
        client = _client(f"http://127.0.0.1:{server.port}")
        for mode, threads in (("sequential", 1), (f"{THREADS} threads", THREADS)):
            table = f"counters-{mode.replace(' ', '-')}"
            _setup(client, table)
            call = _add(client, table)
            for _ in range(20):  # warm the connection pool and the server's code paths
                call()
            before_value = _counter(client, table)
            before_cpu = _cpu_s(server.pid)
            latencies, ok, wall = _run(call, calls, threads)
            cpu = _cpu_s(server.pid) - before_cpu
            lost = ok - (_counter(client, table) - before_value)
            lines.append(_line(name, mode, latencies, ok, wall, cpu, lost))
        client.close()
    finally:
        server.stop()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=2400, help="ADD calls per mode")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="urr-bench-dynamodb-") as folder:
        logs = Path(folder)
        results = bench("moto", moto_server(free_port(), logs / "moto.log"), args.calls)
        results += bench("dynalite", dynalite_server(free_port(), logs / "dyn.log"), args.calls)
    print(
        f"ADD nextPosition (reserve_position's call), {args.calls} calls per row, "
        f"{os.cpu_count()} CPUs"
    )
    for line in results:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
