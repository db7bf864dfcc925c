"""The queue's own admission order, read back from the ``queue-events`` Kafka topic.

The admission tick publishes one ``admitted`` record per user with the tick's time (``at``,
ms) and the user's rank inside that tick (``position``): ``(at, position)`` orders every
admission without ties, which the client's polling could never do.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition


async def _read(bootstrap: str, topic: str, event_id: str) -> list[dict[str, Any]]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = [
            TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            await consumer.topics()
            partitions = [
                TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())
            ]
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await consumer.end_offsets(partitions)
        records: list[dict[str, Any]] = []
        while [tp for tp in partitions if await consumer.position(tp) < ends[tp]]:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            for messages in batch.values():
                for message in messages:
                    try:
                        value = json.loads(message.value)
                    except (TypeError, ValueError):
                        continue
                    if value.get("eventId") == event_id and value.get("type") == "admitted":
                        records.append(value)
        return records
    finally:
        await consumer.stop()


def admissions(bootstrap: str, event_id: str, topic: str = "queue-events") -> dict[str, float]:
    """``user_id -> admission rank key`` (smaller = admitted earlier)."""
    records = asyncio.run(asyncio.wait_for(_read(bootstrap, topic, event_id), timeout=60))
    # Ranks, not arithmetic on epoch milliseconds (a float would lose the in-tick position).
    ordered = sorted(records, key=lambda r: (int(r["at"]), int(r.get("position") or 0)))
    return {str(r["userId"]): float(rank) for rank, r in enumerate(ordered)}
