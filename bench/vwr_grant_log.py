"""What publishing Tier 1's random draw to the admission log costs a cycle (issue 19).

    uv run python bench/vwr_grant_log.py [--places 2000] [--grants 50] [--cycles 20]

A private dynalite holds two random-method events of ``--places`` waiting places each; a
private Tansu broker takes the draw records. Two advancer runtimes share the tables: the
baseline with the grant log off, the other publishing every grant (``grant_log``, acks=all,
one synchronous publish per cycle). They draw ``--grants`` places a cycle in turns (A, B, A,
B, ...), so both see the same machine; printed: median, P95 and P99 of a cycle, and per
grant, side by side, with the load average.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from queue_common import percentile
from vwr_handlers import settings_for

from urr_common.settings import KafkaSettings
from urr_devstack.procs import dynalite_server, free_port, tansu_server
from urr_vwr_lambda.advancer import _grant_random
from urr_vwr_lambda.ids import line_key
from urr_vwr_lambda.queueing import CapacityFeed
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import GrantLogSettings
from urr_vwr_lambda.tables import ensure_tables

SEED = "7e" * 32


def fill(runtime: VwrRuntime, event_id: str, places: int, now_s: int) -> None:
    db, tables = runtime.dynamodb, runtime.settings.tables
    db.put_item(
        TableName=tables.counters,
        Item={
            "eventId": {"S": event_id},
            "isActive": {"BOOL": True},
            "nextPosition": {"N": str(places)},
            "servingCounter": {"N": "0"},
            "batchSize": {"N": "100000"},
            "updatedAt": {"N": "0"},
            "epoch": {"N": "1"},
            "queueMethod": {"S": "random"},
            "orderSeed": {"S": SEED},
            "lineFloor": {"N": "0"},
        },
    )
    items: list[dict[str, Any]] = []
    for position in range(1, places + 1):
        request_id = str(uuid.uuid4())
        common = {"eventId": {"S": event_id}, "epoch": {"N": "1"}}
        items.append(
            common
            | {
                "requestId": {"S": request_id},
                "position": {"N": str(position)},
                "lastSeen": {"N": str(now_s)},
                "ttl": {"N": str(now_s + 86_400)},
            }
        )
        items.append(
            common
            | {
                "requestId": {"S": line_key(1, position)},
                "ownerRequestId": {"S": request_id},
                "ttl": {"N": str(now_s + 86_400)},
            }
        )
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        db.batch_write_item(RequestItems={tables.positions: batch})


def cycle(runtime: VwrRuntime, event_id: str, grants: int) -> float:
    state = runtime.store.get_event(event_id, consistent=True)
    assert state is not None
    feed = CapacityFeed(waiting=0, admitted=0, capacity=1_000_000, admit_per_second=0.0)
    started = time.perf_counter()
    outcome = _grant_random(runtime, state, grants, grants, 0, feed, 2.0)
    took = time.perf_counter() - started
    assert outcome.live == grants, outcome
    return took


def row(name: str, samples: list[float], grants: int) -> str:
    ms = [s * 1000 for s in samples]
    per = [s / grants for s in ms]
    cells = [percentile(ms, q) for q in (0.5, 0.95, 0.99)] + [percentile(per, 0.5)]
    return f"{name:<22}" + "".join(f"{cell:10.2f}" for cell in cells)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--places", type=int, default=2000)
    parser.add_argument("--grants", type=int, default=50)
    parser.add_argument("--cycles", type=int, default=20)
    args = parser.parse_args()
    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "ERROR"
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        dynamo = dynalite_server(free_port(), tmp / "dynalite.log")
        broker = tansu_server(free_port(), tmp / "tansu.log")
        dynamo.start()
        broker.start()
        try:
            base = settings_for(tmp, None)
            base = base.model_copy(
                update={
                    "aws": base.aws.model_copy(
                        update={"dynamodb_endpoint_url": f"http://127.0.0.1:{dynamo.port}"}
                    )
                }
            )
            logged = base.model_copy(
                update={
                    "grant_log": GrantLogSettings(
                        enabled=True,
                        kafka=KafkaSettings(bootstrap_servers=f"127.0.0.1:{broker.port}"),
                    )
                }
            )
            plain, publishing = VwrRuntime(base), VwrRuntime(logged)
            ensure_tables(plain.dynamodb, base.tables)
            now_s = int(time.time())
            fill(plain, "plain", args.places, now_s)
            fill(plain, "logged", args.places, now_s)
            cycle(publishing, "logged", args.grants)  # the producer connects once
            cycle(plain, "plain", args.grants)
            took: dict[str, list[float]] = {"plain": [], "logged": []}
            for _ in range(args.cycles):
                took["plain"].append(cycle(plain, "plain", args.grants))
                took["logged"].append(cycle(publishing, "logged", args.grants))
            assert publishing.grant_log is not None
            assert publishing.grant_log.pending == []
            publishing.grant_log.close()
        finally:
            broker.stop()
            dynamo.stop()
    print(
        f"random cycles of {args.grants} grants over {args.places} places, "
        f"{args.cycles} each, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"{'':<22}{'P50 ms':>10}{'P95 ms':>10}{'P99 ms':>10}{'ms/grant':>10}")
    print(row("grant log off", took["plain"], args.grants))
    print(row("grant log to Kafka", took["logged"], args.grants))
    added = percentile(took["logged"], 0.5) - percentile(took["plain"], 0.5)
    per_grant_us = added * 1e6 / args.grants
    print(f"added per cycle (P50): {added * 1000:.2f} ms, per grant {per_grant_us:.0f} µs")


if __name__ == "__main__":
    main()
