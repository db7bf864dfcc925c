"""Client CPU per DynamoDB call: botocore (as the function builds it) vs the lean client (issue 22).

    make dynalite && PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/dynamodb_client_cpu.py \
        [--calls 300] [--rounds 5]

One fresh dynalite on a free port; the calls a warm container makes per arrival (an
``UpdateItem`` ADD returning ALL_NEW, two conditional ``PutItem``, a ``GetItem``, a
``BatchGetItem`` of two keys), sent through each variant in turn, the order alternating every
round, all in one process. Variants: ``botocore`` (``VwrRuntime``'s client, standard retries),
``botocore, no validation`` (the same with ``parameter_validation=False``), ``botocore,
keepalive`` (``tcp_keepalive=True``), ``lean`` (``LeanDynamoDB`` over the first). Prints the
median over rounds (and min/max) of the client's CPU per call (``time.process_time``) and
dynalite's (``/proc``), with the load average.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from vwr_arrival_cpu import loadavg, proc_cpu_s


def botocore_client(endpoint: str, **extra: Any) -> Any:
    """The function's client (``VwrRuntime._client``'s options) of dynalite."""
    from tier1_crowd_cpu import dynalite_client

    return dynalite_client(
        endpoint, connect_timeout=2, read_timeout=5, max_pool_connections=64, **extra
    )


def mix(client: Any, table: str) -> Callable[[], int]:
    """One arrival's worth of calls; answers how many it made."""

    def run() -> int:
        key = uuid.uuid4().hex
        client.update_item(
            TableName=table,
            Key={"pk": {"S": "event"}},
            UpdateExpression="ADD nextPosition :one",
            ExpressionAttributeValues={":one": {"N": "1"}},
            ReturnValues="ALL_NEW",
        )
        for suffix in ("place", "line"):
            client.put_item(
                TableName=table,
                Item={"pk": {"S": f"{key}#{suffix}"}, "n": {"N": "7"}, "b": {"B": b"salt"}},
                ConditionExpression="attribute_not_exists(pk)",
            )
        client.get_item(TableName=table, Key={"pk": {"S": "event"}}, ConsistentRead=True)
        client.batch_get_item(
            RequestItems={table: {"Keys": [{"pk": {"S": "event"}}, {"pk": {"S": f"{key}#place"}}]}}
        )
        return 5

    return run


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="arrivals' mixes per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    from urr_devstack.procs import dynalite_server, free_port
    from urr_vwr_lambda.dynamodb import LeanDynamoDB

    port = free_port()
    with tempfile.TemporaryDirectory(prefix="ddb-client-") as tmp:
        dynalite = dynalite_server(port, Path(tmp) / "dynalite.log")
        dynalite.start()
        try:
            endpoint = f"http://127.0.0.1:{port}"
            table = "bench-calls"
            base = botocore_client(endpoint)
            base.create_table(
                TableName=table,
                KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
                AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                BillingMode="PAY_PER_REQUEST",
            )
            variants = {
                "botocore": mix(base, table),
                "botocore, no validation": mix(
                    botocore_client(endpoint, parameter_validation=False), table
                ),
                "botocore, tcp_keepalive": mix(
                    botocore_client(endpoint, tcp_keepalive=True), table
                ),
                "lean": mix(
                    LeanDynamoDB(
                        botocore_client(endpoint),
                        max_attempts=3,
                        connect_timeout_s=2,
                        read_timeout_s=5,
                    ),
                    table,
                ),
            }
            for run in variants.values():
                for _ in range(30):
                    run()
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
            print(f"load before: {loadavg()}")
            for round_no in range(args.rounds):
                order = list(variants.items())
                if round_no % 2:
                    order.reverse()
                for name, run in order:
                    cpu0, dyn0, calls = time.process_time(), proc_cpu_s(dynalite.pid or 0), 0
                    for _ in range(args.calls):
                        calls += run()
                    results[name].append(
                        (
                            (time.process_time() - cpu0) / calls * 1e6,
                            (proc_cpu_s(dynalite.pid or 0) - dyn0) / calls * 1e6,
                        )
                    )
            print(f"load after: {loadavg()}")
            print(
                f"\n{args.calls * 5} calls per variant per round, {args.rounds} rounds "
                "(median [min-max]), µs of CPU per call"
            )
            base_ms = statistics.median(r[0] for r in results["botocore"])
            for name, rows in results.items():
                ours = [r[0] for r in rows]
                theirs = [r[1] for r in rows]
                cut = 1 - statistics.median(ours) / base_ms
                print(
                    f"  {name:<26} client {statistics.median(ours):6.0f} "
                    f"[{min(ours):.0f}-{max(ours):.0f}]  dynalite "
                    f"{statistics.median(theirs):6.0f} [{min(theirs):.0f}-{max(theirs):.0f}]"
                    f"  client vs botocore {-cut:+.0%}"
                )
        finally:
            dynalite.stop()


if __name__ == "__main__":
    main()
