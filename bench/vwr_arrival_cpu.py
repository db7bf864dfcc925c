"""CPU of one Tier-1 arrival in a warm container against dynalite, before/after (issue 22).

    make dynalite && uv run --frozen python bench/vwr_arrival_cpu.py \
        [--arrivals 400] [--rounds 3] [--before main]

Part 1: one process plays a warm Lambda container (the real ``api.handler`` with its boto3
client) against a fresh dynalite: per arrival an anonymous assign and, once the counter has
passed it (moved outside the timing, as the advancer would), the check that lets it in: what
the flash crowd's arrivals cost Tier 1, without the emulator's HTTP and pipe hop (``bench/
tier1_crowd_cpu.py`` has them). It prints the container's CPU per arrival
(``time.process_time``: every thread of the process), dynalite's (from /proc), and the
DynamoDB operations per arrival (botocore's ``before-call`` hook). ``--before REV`` runs the
same in a child process on that revision's ``urr_vwr_lambda`` (``git archive``, first on
``PYTHONPATH``), alternating with the working tree's, in one run.

Part 2: where one call's CPU goes. The same ``GetItem`` through boto3, then as a bare
``http.client`` POST of the same JSON signed per call with botocore's SigV4, then unsigned
(dynalite does not check signatures): what a leaner DynamoDB client could save per call.
"""

from __future__ import annotations

import argparse
import copy
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")
sys.path.insert(0, str(Path(__file__).resolve().parent))


def proc_cpu_s(pid: int) -> float:
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def arrivals_child(arrivals: int, endpoint: str, dynalite_pid: int) -> dict[str, Any]:
    """Runs in the child: the warm container's loop; answers a JSON line."""
    from tier1_crowd_cpu import EVENT
    from vwr_handlers import event, settings_for

    from urr_vwr_lambda.api import make_handler
    from urr_vwr_lambda.keys import ensure_local_keys
    from urr_vwr_lambda.runtime import VwrRuntime
    from urr_vwr_lambda.tables import ensure_tables

    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    tmp = Path(tempfile.mkdtemp(prefix="vwr-arrival-"))
    settings = settings_for(tmp, endpoint)
    ensure_local_keys(settings.vwr_tokens)
    runtime = VwrRuntime(settings)
    ensure_tables(runtime.dynamodb, settings.tables)
    store = runtime.store
    store.put_event(EVENT, is_active=True, batch_size=500, now_ms=int(time.time() * 1000))
    runtime.dynamodb.update_item(
        TableName=settings.tables.counters,
        Key={"eventId": {"S": EVENT}},
        UpdateExpression="SET placesPerClient = :zero",
        ExpressionAttributeValues={":zero": {"N": "0"}},
    )
    handler = make_handler(lambda: runtime)
    assign_event = event("rest_assign.json", path=f"/vwr/assign/{EVENT}")
    sent: list[str] = []
    runtime.dynamodb.meta.events.register(
        "before-call.dynamodb", lambda model, **_: sent.append(model.name)
    )
    outside = [0.0, 0.0]  # (CPU, dynalite CPU) of what the loop does between the timed parts

    def wave(count: int) -> None:
        ids = []
        for _ in range(count):
            request_id = str(uuid.uuid4())
            call = copy.deepcopy(assign_event)
            call["body"] = json.dumps({"requestId": request_id})
            answer = handler(call, None)
            if answer["statusCode"] != 201:
                raise RuntimeError(answer)
            ids.append(request_id)
        cpu0, dyn0, n0 = time.process_time(), proc_cpu_s(dynalite_pid), len(sent)
        state = store.get_event(EVENT, consistent=True)
        assert state is not None
        store.advance_to(
            state,
            serving_counter=state.next_position,
            admit_rate=None,
            now_ms=int(time.time() * 1000),
        )
        time.sleep(runtime.settings.poll.counters_cache_s + 0.1)  # the copies age out
        del sent[n0:]
        outside[0] += time.process_time() - cpu0
        outside[1] += proc_cpu_s(dynalite_pid) - dyn0
        for request_id in ids:
            call = event("rest_check.json", path=f"/vwr/check/{EVENT}/{request_id}")
            answer = handler(call, None)
            if answer["statusCode"] != 200 or not json.loads(answer["body"])["admitted"]:
                raise RuntimeError(answer)

    wave(50)  # warm: clients, keys, copies
    sent.clear()
    outside[:] = [0.0, 0.0]
    cpu0, dyn0 = time.process_time(), proc_cpu_s(dynalite_pid)
    for _ in range(arrivals // 50):
        wave(50)
    done = arrivals // 50 * 50
    cpu = time.process_time() - cpu0 - outside[0]
    dyn = proc_cpu_s(dynalite_pid) - dyn0 - outside[1]
    ops = {name: round(count / done, 2) for name, count in sorted(Counter(sent).items())}
    return {"cpu_ms": cpu / done * 1000, "dyn_ms": dyn / done * 1000, "ops": ops}


def run_variant(
    label: str, src: Path | None, extra_env: dict[str, str], arrivals: int, work: Path
) -> dict[str, Any]:
    from urr_devstack.procs import dynalite_server, free_port

    port = free_port()
    dynalite = dynalite_server(port, work / f"dynalite-{label}.log")
    dynalite.start()
    env = {**os.environ, **extra_env}
    if src is not None:
        env["PYTHONPATH"] = f"{src}{os.pathsep}{env.get('PYTHONPATH', '')}"
    try:
        load0 = loadavg()
        child = subprocess.run(  # noqa: S603 - our own argv
            [
                sys.executable,
                __file__,
                "--child",
                str(arrivals),
                f"http://127.0.0.1:{port}",
                str(dynalite.pid),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    finally:
        dynalite.stop()
    result: dict[str, Any] = json.loads(child.stdout.strip().splitlines()[-1])
    result.update(label=label, load=f"{load0} -> {loadavg()}")
    return result


def part_two(calls: int, work: Path) -> None:
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from tier1_crowd_cpu import dynalite_client

    from urr_devstack.procs import dynalite_server, free_port

    port = free_port()
    dynalite = dynalite_server(port, work / "dynalite-calls.log")
    dynalite.start()
    url = f"http://127.0.0.1:{port}"
    try:
        client = dynalite_client(url)
        client.create_table(
            TableName="calls",
            KeySchema=[{"AttributeName": "eventId", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "eventId", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        client.put_item(TableName="calls", Item={"eventId": {"S": "e"}, "n": {"N": "1"}})
        request = {"TableName": "calls", "Key": {"eventId": {"S": "e"}}, "ConsistentRead": True}
        credentials = Credentials("bench", "bench")
        connection = http.client.HTTPConnection("127.0.0.1", port)
        body = json.dumps(request).encode()
        base_headers = {
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.GetItem",
        }

        def boto() -> None:
            client.get_item(**request)

        def raw(sign: bool) -> None:
            headers = dict(base_headers)
            if sign:
                signed = AWSRequest(method="POST", url=url + "/", data=body, headers=headers)
                SigV4Auth(credentials, "dynamodb", "us-east-1").add_auth(signed)
                headers = dict(signed.headers.items())
            else:
                headers["Authorization"] = (
                    "AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/dynamodb/aws4_request, "
                    "SignedHeaders=host, Signature=0"
                )
                headers["X-Amz-Date"] = "20260101T000000Z"
            connection.request("POST", "/", body=body, headers=headers)
            answer = connection.getresponse()
            json.loads(answer.read())
            if answer.status != 200:
                raise RuntimeError(answer.status)

        from urr_vwr_lambda.dynamodb import LeanDynamoDB

        lean = LeanDynamoDB(
            dynalite_client(url), max_attempts=3, connect_timeout_s=2, read_timeout_s=5
        )

        rows = [
            ("boto3 client.get_item", boto),
            ("LeanDynamoDB.get_item", lambda: lean.get_item(**request)),
            ("http.client + botocore SigV4", lambda: raw(True)),
            ("http.client, no signing", lambda: raw(False)),
        ]
        print(f"\nPart 2: CPU per GetItem, {calls} calls each, 3 rounds (median), load {loadavg()}")
        for name, fn in rows:
            for _ in range(100):
                fn()
            rounds = []
            for _ in range(3):
                cpu0, dyn0 = time.process_time(), proc_cpu_s(dynalite.pid or 0)
                for _ in range(calls):
                    fn()
                rounds.append(
                    (
                        (time.process_time() - cpu0) / calls * 1e6,
                        (proc_cpu_s(dynalite.pid or 0) - dyn0) / calls * 1e6,
                    )
                )
            ours = statistics.median(r[0] for r in rounds)
            theirs = statistics.median(r[1] for r in rounds)
            print(f"  {name:<32} client {ours:6.0f} us   dynalite {theirs:6.0f} us")
    finally:
        dynalite.stop()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(arrivals_child(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--arrivals", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--before", help="a git revision to compare with, alternately")
    parser.add_argument(
        "--clients", help="compare URR_DYNAMODB_CLIENT values instead, e.g. botocore,lean"
    )
    parser.add_argument("--calls", type=int, default=1000, help="part 2's calls per round")
    args = parser.parse_args()
    from tier1_crowd_cpu import alternate

    with tempfile.TemporaryDirectory(prefix="vwr-arrival-") as tmp:
        work = Path(tmp)
        results = alternate(
            args.before,
            args.rounds,
            work,
            lambda label, src, env: run_variant(label, src, env, args.arrivals, work),
            args.clients,
        )
        print(f"\nPart 1: {args.arrivals} arrivals (assign + admitted check) per run")
        print(f"{'run':<10} {'container ms':>12} {'dynalite ms':>12}  DynamoDB calls  load")
        for r in results:
            ops = " ".join(f"{k} {v}" for k, v in r["ops"].items())
            print(f"{r['label']:<10} {r['cpu_ms']:12.2f} {r['dyn_ms']:12.2f}  {ops}  {r['load']}")
        part_two(args.calls, work)


if __name__ == "__main__":
    main()
