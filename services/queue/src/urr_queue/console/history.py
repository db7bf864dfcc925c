"""The console's memory in Redis: sparkline rings per event and the audit stream.

Rings are short lists (newest first) next to the event's own keys (same hash tag), trimmed on
every push and expiring when nobody samples, so an abandoned event leaves nothing behind.
One replica samples per period (``SET NX`` on the period's number), so several queue
replicas do not write the same point twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import orjson

from urr_queue.console.model import AuditRecord

if TYPE_CHECKING:
    from redis.asyncio import Redis
    from redis.asyncio.cluster import RedisCluster

AUDIT_STREAM = "urr:console:audit"
REFUSALS_RING = "urr:console:refusals"
SAMPLE_SLOT_PREFIX = "urr:console:sampled:"


def ring_key(event_id: str) -> str:
    return "{" + event_id + "}:console:samples"


class ConsoleHistory:
    def __init__(self, redis: Redis | RedisCluster, *, points: int, interval_s: float) -> None:
        self._redis = redis
        self.points = points
        self.interval_s = interval_s
        # A ring outlives its last sample by its own length, then goes.
        self._ttl_ms = int(points * interval_s * 1000) + 60_000

    async def claim_period(self, period: int) -> bool:
        """True for the one replica that samples this period."""
        key = f"{SAMPLE_SLOT_PREFIX}{period}"
        return bool(await self._redis.set(key, b"1", nx=True, px=int(self.interval_s * 2000)))

    async def push(self, samples: dict[str, dict[str, Any]], refusals: int, at_ms: int) -> None:
        pipe = self._redis.pipeline(transaction=False)
        entries = {ring_key(event_id): {"t": at_ms, **s} for event_id, s in samples.items()}
        entries[REFUSALS_RING] = {"t": at_ms, "refused": refusals}
        for key, sample in entries.items():
            pipe.lpush(key, orjson.dumps(sample))
            pipe.ltrim(key, 0, self.points - 1)
            pipe.pexpire(key, self._ttl_ms)
        await pipe.execute()

    async def read(
        self, event_ids: Sequence[str]
    ) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
        """Rings of the events and of the refusals, newest first."""
        pipe = self._redis.pipeline(transaction=False)
        for event_id in event_ids:
            pipe.lrange(ring_key(event_id), 0, self.points - 1)
        pipe.lrange(REFUSALS_RING, 0, self.points - 1)
        replies = await pipe.execute()
        rings = {
            event_id: [orjson.loads(raw) for raw in reply]
            for event_id, reply in zip(event_ids, replies, strict=False)
        }
        return rings, [orjson.loads(raw) for raw in replies[-1]]

    async def now_ms(self) -> int:
        seconds, micros = await self._redis.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def audit(self, record: AuditRecord, *, keep: int) -> str:
        entry_id = await self._redis.xadd(
            AUDIT_STREAM,
            {"record": orjson.dumps(record.to_json())},
            maxlen=keep,
            approximate=True,
        )
        return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)

    async def audit_trail(self, count: int) -> list[dict[str, Any]]:
        entries = await self._redis.xrevrange(AUDIT_STREAM, count=count) or []
        out = []
        for entry_id, fields in entries:
            raw = (fields or {}).get(b"record") or (fields or {}).get("record") or b"{}"
            record = orjson.loads(raw)
            ident = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
            out.append({"id": ident, **record})
        return out
