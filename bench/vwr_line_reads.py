"""The advancer's read of the line: keyed line items against the old position index.

    uv run python bench/vwr_line_reads.py [--sizes 500 5000] [--reads 20]

For each event size, a private moto server holds that many places with the last 50 still
waiting, twice: in the real ``positions`` table (places and their line items, as ``put_place``
writes them) and, as the baseline, in a table with the former ``eventId-position-index`` GSI.
Each side reads the 40 places above the serving counter the way its advancer does (keyed
BatchGetItems through ``VwrStore.places_above``; the old Query on the index) and prints the
median and tails. A second client meanwhile sends GetItems, which shows how long each read
holds up every other DynamoDB call on moto's one interpreter.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from queue_common import percentile
from vwr_handlers import settings_for

from urr_devstack.procs import free_port, moto_server
from urr_vwr_lambda.ids import line_key
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.store import EventState
from urr_vwr_lambda.tables import ensure_tables

WAITING = 50
PAGE = 40
BASELINE_TABLE = "positions_gsi"
BASELINE_INDEX = "eventId-position-index"


def baseline_table() -> dict[str, Any]:
    return {
        "TableName": BASELINE_TABLE,
        "AttributeDefinitions": [
            {"AttributeName": "eventId", "AttributeType": "S"},
            {"AttributeName": "requestId", "AttributeType": "S"},
            {"AttributeName": "position", "AttributeType": "N"},
        ],
        "KeySchema": [
            {"AttributeName": "eventId", "KeyType": "HASH"},
            {"AttributeName": "requestId", "KeyType": "RANGE"},
        ],
        "GlobalSecondaryIndexes": [
            {
                "IndexName": BASELINE_INDEX,
                "KeySchema": [
                    {"AttributeName": "eventId", "KeyType": "HASH"},
                    {"AttributeName": "position", "KeyType": "RANGE"},
                ],
                "Projection": {
                    "ProjectionType": "INCLUDE",
                    "NonKeyAttributes": ["lastSeen", "epoch", "ttl", "abandoned", "admittedAt"],
                },
            }
        ],
        "BillingMode": "PAY_PER_REQUEST",
    }


def fill(db: Any, table: str, event_id: str, size: int, *, lines: bool, now_s: int) -> None:
    items: list[dict[str, Any]] = []
    for position in range(1, size + 1):
        request_id = str(uuid.uuid4())
        place = {
            "eventId": {"S": event_id},
            "requestId": {"S": request_id},
            "position": {"N": str(position)},
            "epoch": {"N": "1"},
            "lastSeen": {"N": str(now_s)},
            "ttl": {"N": str(now_s + 86_400)},
        }
        items.append(place)
        if lines:
            items.append(
                {
                    "eventId": {"S": event_id},
                    "requestId": {"S": line_key(1, position)},
                    "ownerRequestId": {"S": request_id},
                    "epoch": {"N": "1"},
                    "ttl": {"N": str(now_s + 86_400)},
                }
            )
    for start in range(0, len(items), 25):
        batch = [{"PutRequest": {"Item": item}} for item in items[start : start + 25]]
        db.batch_write_item(RequestItems={table: batch})


def baseline_read(db: Any, state: EventState, now_s: int) -> int:
    """The advancer's former read: one Query page on the position index."""
    answer = db.query(
        TableName=BASELINE_TABLE,
        IndexName=BASELINE_INDEX,
        KeyConditionExpression="eventId = :e AND #pos BETWEEN :lo AND :hi",
        FilterExpression="epoch = :epoch AND #ttl > :now AND attribute_not_exists(abandoned)",
        ProjectionExpression="requestId, #pos, lastSeen, admittedAt",
        ExpressionAttributeNames={"#pos": "position", "#ttl": "ttl"},
        ExpressionAttributeValues={
            ":e": {"S": state.event_id},
            ":lo": {"N": str(state.serving_counter + 1)},
            ":hi": {"N": str(state.next_position)},
            ":epoch": {"N": "1"},
            ":now": {"N": str(now_s)},
        },
        Limit=PAGE,
    )
    return len(answer["Items"])


def figures(samples_s: list[float]) -> str:
    ms = [s * 1000 for s in samples_s]
    return " ".join(f"{percentile(ms, q):8.1f}" for q in (0.5, 0.95, 0.99))


def measure(read: Callable[[], int], reads: int, probe: Callable[[], None]) -> tuple[str, str]:
    """Timings of ``read`` and of the GetItems another client sent meanwhile."""
    took: list[float] = []
    probes: list[float] = []
    done = threading.Event()

    def probing() -> None:
        while not done.is_set():
            started = time.perf_counter()
            probe()
            probes.append(time.perf_counter() - started)
            time.sleep(0.005)

    thread = threading.Thread(target=probing)
    thread.start()
    try:
        for _ in range(reads):
            started = time.perf_counter()
            assert read() == PAGE
            took.append(time.perf_counter() - started)
    finally:
        done.set()
        thread.join()
    return figures(took), figures(probes)


def run(sizes: list[int], reads: int, tmp: Path) -> None:
    port = free_port()
    server = moto_server(port, tmp / "moto.log")
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        settings = settings_for(tmp, endpoint)
        runtime = VwrRuntime(settings)
        db, store = runtime.dynamodb, runtime.store
        prober = VwrRuntime(settings).dynamodb
        ensure_tables(db, settings.tables)
        db.create_table(**baseline_table())
        now_s = int(time.time())
        print(f"advancer read of {PAGE} waiting places (ms), GetItem from another client meanwhile")
        print(f"{'places':>7} {'read':<24} {'p50':>8} {'p95':>8} {'p99':>8}   GetItem p50/p95/p99")

        def probe() -> None:
            prober.get_item(TableName=settings.tables.counters, Key={"eventId": {"S": "none"}})

        idle: list[float] = []
        for _ in range(200):
            started = time.perf_counter()
            probe()
            idle.append(time.perf_counter() - started)
        for size in sizes:
            event_id = f"evt-{size}"
            fill(db, settings.tables.positions, event_id, size, lines=True, now_s=now_s)
            fill(db, BASELINE_TABLE, event_id, size, lines=False, now_s=now_s)
            state = EventState(
                event_id=event_id,
                is_active=True,
                next_position=size,
                serving_counter=size - WAITING,
                batch_size=PAGE,
                epoch=1,
                updated_at_ms=0,
                admit_rate=None,
            )

            def keyed(state: EventState = state) -> int:
                rows = store.places_above(
                    state, upto=state.next_position, now_s=now_s, page_size=PAGE
                )
                return sum(1 for _ in zip(range(PAGE), rows, strict=False))

            def indexed(state: EventState = state) -> int:
                return baseline_read(db, state, now_s)

            for label, read in (
                ("Query on the index (old)", indexed),
                ("line items by key", keyed),
            ):
                took, probed = measure(read, reads, probe)
                print(f"{size:>7} {label:<24} {took}   {probed}")
        print(f"GetItem with no read running (p50 p95 p99 ms): {figures(idle)}")
        db.close()
        prober.close()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--reads", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(args.sizes, args.reads, Path(tmp))


if __name__ == "__main__":
    main()
