"""Idle CPU of the Kafka consumers and of the broker, and what a record's delivery then takes.

    uv run --frozen python bench/kafka_idle_cpu.py [--seconds 60] [--before main] [--records 5]

A private Tansu broker (``memory://``, started as the tests' ``kafka_bootstrap`` fixture does)
with the stack's topics (3 partitions each), and one process per consumer of the crowd's
stack that fetches continuously: stats, payment, reservation outcomes, admission log. Each
runs ``urr_ticket_worker.kafka_loop.consume`` (the booking consumers' loop; the admission
log's own loop fetches the same way, ``getmany`` on an aiokafka consumer) in that consumer's
group, on its topics, with a handler that only notes when a record arrived, and with the
fetch wait that revision's settings give the consumer (read from that revision's sources,
``git archive``: before this branch the admission log's was fixed at 200 ms in its code).

Each side (``--before REV``, then the working tree) gets a fresh broker: its consumers join,
then stay idle for ``--seconds`` (no records), and the CPU each consumer process and Tansu
used in that window is read from /proc. Then ``--records`` records are produced to each topic,
1.3 s apart, and the time from the produce to each consumer's handler is its delivery
latency (median and max): what a longer fetch wait costs a record that comes while the
consumer is idle. Compare within a run only, the machine is shared.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tier1_crowd_cpu import cpu_s, export_revision, loadavg

from urr_common.kafka_topics import TOPICS, ensure_topics
from urr_devstack.procs import free_port, tansu_server

REPO = Path(__file__).resolve().parents[1]
SOURCES = (
    "libs/common/src",
    "services/ticket_worker/src",
    "services/ticket/src",
    "services/admission_log/src",
)

#: Each consumer's waits by its revision's settings (printed as JSON).
PROBE = """
import json
from urr_ticket_worker.settings import ConsumerSettings
from urr_ticket.settings import TicketSettings
from urr_admission_log.settings import LogOptions
worker = ConsumerSettings()
ticket = TicketSettings.model_fields["consumers"].default_factory()
log = LogOptions()
print(json.dumps({
    "stats": getattr(worker, "stats_fetch_max_wait_ms", worker.fetch_max_wait_ms),
    "payment": worker.fetch_max_wait_ms,
    "outcomes": ticket.fetch_max_wait_ms,
    "admission_log": getattr(log, "fetch_max_wait_ms", 200),
}))
"""

#: name -> (group, topics), as the services subscribe.
CONSUMERS = {
    "stats": ("urr-stats", ("transfer-events", "membership-events", "queue-events")),
    "payment": ("urr-payment", ("payment-events",)),
    "outcomes": ("urr-ticket-outcomes", ("reservation-events", "queue-events")),
    "admission_log": ("urr-admission-log", ("queue-events",)),
}

#: One consumer: the booking consumers' loop, a handler that notes arrivals on stdout.
CONSUMER = """
import asyncio, json, sys, time
from prometheus_client import CollectorRegistry
from urr_common.settings import KafkaSettings
from urr_ticket_worker.kafka_loop import ConsumerMetrics, consume
from urr_ticket_worker.process import Heartbeat

bootstrap, name, group, wait, *topics = sys.argv[1:]

async def handle(record):
    print(json.dumps({"t": time.time(), "value": record.value.decode()}), flush=True)
    return "applied"

async def main():
    await consume(
        name=name, kafka=KafkaSettings(bootstrap_servers=bootstrap), group_id=group,
        topics=topics, handle=handle, metrics=ConsumerMetrics(CollectorRegistry()),
        stop=asyncio.Event(), beat=Heartbeat(), fetch_max_wait_ms=int(wait),
    )

print(json.dumps({"ready": True}), flush=True)
asyncio.run(main())
"""


def waits_of(src_path: str) -> dict[str, int]:
    probe = subprocess.run(  # noqa: S603 - this interpreter, our own code
        [sys.executable, "-c", PROBE],
        env={**os.environ, "PYTHONPATH": src_path},
        capture_output=True,
        check=True,
        text=True,
    )
    return {k: int(v) for k, v in json.loads(probe.stdout).items()}


async def produce(bootstrap: str, topics: list[str], records: int) -> list[tuple[str, float]]:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    sent: list[tuple[str, float]] = []
    try:
        for n in range(records):
            await asyncio.sleep(1.3)
            for topic in topics:
                value = f"{topic}-{n}"
                at = time.time()
                await producer.send_and_wait(topic, value.encode(), key=b"bench")
                sent.append((value, at))
    finally:
        await producer.stop()
    return sent


def run_side(label: str, src_path: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    waits = {**waits_of(src_path), **(args.wait if label == "tree" else {})}
    port = free_port()
    broker = tansu_server(port, work / f"tansu-{label}.log")
    broker.start()
    bootstrap = f"127.0.0.1:{port}"
    procs: dict[str, subprocess.Popen[str]] = {}
    try:
        asyncio.run(ensure_topics(bootstrap, TOPICS))
        env = {**os.environ, "PYTHONPATH": src_path}
        for name, (group, topics) in CONSUMERS.items():
            procs[name] = subprocess.Popen(  # noqa: S603 - this interpreter, our own code
                [sys.executable, "-c", CONSUMER, bootstrap, name, group, str(waits[name]), *topics],
                env=env,
                stdout=subprocess.PIPE,
                text=True,
            )
        for proc in procs.values():
            assert proc.stdout is not None
            proc.stdout.readline()  # ready
        time.sleep(args.settle)  # the groups join and settle (Tansu's rebalance delay)
        tansu_pid = broker.process.pid  # type: ignore[union-attr]
        load0 = loadavg()
        before = {name: cpu_s(proc.pid, children=False) for name, proc in procs.items()}
        before["tansu"] = cpu_s(tansu_pid, children=False)
        time.sleep(args.seconds)
        after = {name: cpu_s(proc.pid, children=False) for name, proc in procs.items()}
        after["tansu"] = cpu_s(tansu_pid, children=False)
        load1 = loadavg()
        all_topics = sorted({t for _, topics in CONSUMERS.values() for t in topics})
        sent = dict(asyncio.run(produce(bootstrap, all_topics, args.records)))
        time.sleep(max(waits.values()) / 1000 + 2)
    finally:
        for proc in procs.values():
            proc.terminate()
        broker.stop()
    latency: dict[str, list[float]] = {}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=30)
        for line in out.splitlines():
            seen = json.loads(line)
            if "value" in seen and seen["value"] in sent:
                latency.setdefault(name, []).append((seen["t"] - sent[seen["value"]]) * 1000)
    return {
        "label": label,
        "waits_ms": waits,
        "cpu_s": {name: after[name] - before[name] for name in after},
        "latency_ms": {
            name: (statistics.median(values), max(values), len(values))
            for name, values in latency.items()
        },
        "load": f"{load0} -> {load1}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--settle", type=float, default=8.0, help="seconds for the groups to join")
    parser.add_argument("--records", type=int, default=5)
    parser.add_argument("--before", help="a git revision to compare with (e.g. main)")
    parser.add_argument(
        "--wait", action="append", default=[], help="NAME=MS: the tree's wait for a consumer"
    )
    args = parser.parse_args()
    args.wait = {k: int(v) for k, v in (item.split("=", 1) for item in args.wait)}
    work = Path(tempfile.mkdtemp(prefix="urr-kafka-idle-"))
    sides: list[tuple[str, str]] = []
    if args.before:
        exported = [export_revision(args.before, work / "before", folder) for folder in SOURCES]
        sides.append(("before", os.pathsep.join(map(str, exported))))
    sides.append(("tree", os.pathsep.join(str(REPO / folder) for folder in SOURCES)))
    results = [run_side(label, src, args, work) for label, src in sides]
    for result in results:
        print(json.dumps(result))
    names = [*CONSUMERS, "tansu"]
    print(f"\nidle CPU over {args.seconds:g} s (s), fetch wait (ms), delivery latency med/max (ms)")
    print(f"{'':14}" + "".join(f"{r['label']:>34}" for r in results))
    for name in names:
        row = f"{name:14}"
        for r in results:
            wait = r["waits_ms"].get(name, "")
            lat = r["latency_ms"].get(name)
            lat_s = f"{lat[0]:.0f}/{lat[1]:.0f} ({lat[2]})" if lat else "-"
            row += f"{r['cpu_s'][name]:10.2f} {wait!s:>6} {lat_s:>17}"
        print(row)
    for r in results:
        total = sum(r["cpu_s"].values())
        print(f"{r['label']}: total {total:.2f} s, load {r['load']}")


if __name__ == "__main__":
    main()
