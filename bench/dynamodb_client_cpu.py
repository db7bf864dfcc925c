"""Client CPU per DynamoDB call: botocore (as the function builds it) vs the lean client (issue 22).

    make dynalite && PATH=$PWD/.venv/bin:$PATH .venv/bin/python bench/dynamodb_client_cpu.py \
        [--calls 300] [--rounds 5] [--signatures 2000]

One fresh dynalite on a free port; the calls a warm container makes per arrival (an
``UpdateItem`` ADD returning ALL_NEW, two conditional ``PutItem``, a ``GetItem``, a
``BatchGetItem`` of two keys), sent through each variant in turn, the order alternating every
round, all in one process. Variants: ``botocore`` (``VwrRuntime``'s client, standard retries),
``botocore, no validation`` (the same with ``parameter_validation=False``), ``botocore,
keepalive`` (``tcp_keepalive=True``), ``lean`` (``LeanDynamoDB`` over the first). Prints the
median over rounds (and min/max) of the client's CPU per call (``time.process_time``) and
dynalite's (``/proc``), with the load average. ``--signatures N`` first times botocore's
``SigV4Auth`` against the lean client's own signer (``urr_common.sigv4``), N per round.
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


def signer_cost(signatures: int, rounds: int) -> None:
    """CPU per signature of one ``GetItem`` request: botocore's ``SigV4Auth`` (as the lean
    client signed until ``urr_common.sigv4``) against the lean client's own signer,
    alternating, with a session token; the two ``Authorization`` headers of one instant are
    checked equal first (the tests do it byte for byte over fuzzed requests)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from urr_common.sigv4 import SigV4Signer

    credentials = Credentials("AKIDBENCH", "bench-secret", "bench-session-token")
    body = b'{"TableName":"bench-calls","Key":{"pk":{"S":"event"}},"ConsistentRead":true}'
    signer = SigV4Signer(region="eu-west-1", service="dynamodb", host="127.0.0.1:8000")

    def headers() -> dict[str, str]:
        return {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB.GetItem"}

    def botocore_sign() -> str:
        request = AWSRequest(
            method="POST", url="http://127.0.0.1:8000/", data=body, headers=headers()
        )
        SigV4Auth(credentials.get_frozen_credentials(), "dynamodb", "eu-west-1").add_auth(request)
        return str(request.headers["Authorization"])

    def own_sign() -> str:
        return signer.sign(headers(), body, credentials.get_frozen_credentials())["Authorization"]

    for _ in range(3):  # the same second on both sides, or try again
        if botocore_sign() == own_sign():
            break
    else:
        raise SystemExit("the two signers disagree")
    results: dict[str, list[float]] = {"botocore SigV4Auth": [], "urr_vwr_lambda.sigv4": []}
    for round_no in range(rounds):
        order = [("botocore SigV4Auth", botocore_sign), ("urr_vwr_lambda.sigv4", own_sign)]
        for name, sign in order if round_no % 2 == 0 else reversed(order):
            cpu0 = time.process_time()
            for _ in range(signatures):
                sign()
            results[name].append((time.process_time() - cpu0) / signatures * 1e6)
    print(f"\nSigV4, {signatures} signatures per round, {rounds} rounds, µs of CPU per signature")
    for name, rows in results.items():
        print(f"  {name:<22} {statistics.median(rows):6.1f} [{min(rows):.1f}-{max(rows):.1f}]")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=300, help="arrivals' mixes per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--signatures", type=int, default=0, help="also time the two SigV4 signers (per round)"
    )
    args = parser.parse_args()
    if args.signatures:
        signer_cost(args.signatures, args.rounds)

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
