"""Relaying the admission outbox to ``queue-events``: no admission without its record (issue 19).

The public admission log is built from the ``admitted`` and ``waived`` records on
``queue-events``; a lost one is an admission the log misses. So the tick writes them into the
event's outbox stream (``{e}:outbox``) in the very script that admits (``tick.lua``), and this
relay hands them to Kafka (``acks=all``) in stream order. An entry leaves the outbox only after
the broker acknowledged it: a Kafka outage, a failed send or a restart leave it for the next
round, so a record may be sent twice (same ``id``: the log appends it once) but never lost.

One stream per event, not one per replica: the tick's keys all live in the event's Redis
Cluster slot, and one stream keeps an event's records in admission order (a waiver before the
late admission it explains). A lease per event (``outbox_lease.lua``) makes one replica at a
time relay an event's outbox, so records stay in order and are normally sent once; another
replica takes over when the holder stops renewing it (``lease_ttl_s``). Every replica's round
also measures every outbox (depth, oldest age), for the gauges.

A full outbox (``max_len``, Kafka down that long) is never trimmed: the event's ticks admit
nobody until it drains (``urr_queue_outbox_full_ticks``, a warning per tick).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
import uuid
from contextlib import AsyncExitStack
from importlib import resources
from typing import TYPE_CHECKING, Any

import orjson
from redis.exceptions import RedisError

from urr_common.logs import get_logger
from urr_common.tasks import raise_if_cancelled
from urr_queue.events import EventType, Producer, ProducerFactory
from urr_queue.keys import EVENTS_SET, OUTBOXES_SET, event_keys
from urr_queue.members import decode_member
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import OutboxSettings

if TYPE_CHECKING:
    from urr_queue.store import RedisClient

_LOG = get_logger(__name__)
#: Batches one event's outbox relays in one round before the next event gets its turn.
_BATCHES_PER_ROUND = 20
#: Lease calls of one survey in flight at once (redis-py pools raise when exhausted).
_SURVEY_CONCURRENCY = 16


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _raw(value: Any) -> bytes:
    return value if isinstance(value, bytes) else str(value).encode()


def _number(value: bytes) -> int:
    try:
        return int(value)
    except ValueError:  # a score Redis wrote as a float ("1e+12" style)
        return int(float(value))


def outbox_record(event_id: str, fields: dict[Any, Any]) -> dict[str, Any]:
    """The ``queue-events`` record of one outbox entry (the shapes ``events.py`` publishes).
    The queue's Redis client answers bytes; read on the relay's hot path, once per record."""
    get = {_raw(name): _raw(value) for name, value in fields.items()}
    if b"json" in get:  # written whole by ``QueueStore.append_outbox``
        whole: dict[str, Any] = orjson.loads(get[b"json"])
        return whole
    kind = get[b"type"].decode()
    if kind == EventType.WAIVED.value:
        return {
            "id": get[b"id"].decode(),
            "type": kind,
            "eventId": event_id,
            "queueNumbers": [int(n) for n in get[b"numbers"].split(b",")],
            "reason": "order_hold",
            "at": int(get[b"at"]),
        }
    number = _number(get[b"number"])
    record = {
        "id": get[b"id"].decode(),
        "type": kind,
        "eventId": event_id,
        "userId": decode_member(get[b"member"]),
        "position": int(get[b"position"]),
        "at": int(get[b"at"]),
        "queueNumber": number if number >= 0 else None,
    }
    if b"path" in get:
        record["path"] = get[b"path"].decode()
    if b"key" in get:
        record["orderKey"] = int(get[b"key"])
    return record


class OutboxRelay:
    def __init__(
        self,
        redis: RedisClient,
        *,
        topic: str,
        settings: OutboxSettings,
        metrics: QueueMetrics,
        producer_factory: ProducerFactory,
        owner: str | None = None,
    ) -> None:
        self.redis = redis
        self.topic = topic
        self.settings = settings
        self.metrics = metrics
        self._factory = producer_factory
        #: Names this replica in the leases it holds (host, pid and a random part).
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        text = (resources.files("urr_queue") / "lua" / "outbox_lease.lua").read_text("utf-8")
        self._lease = redis.register_script(text)
        self._lease_ms = str(round(settings.lease_ttl_s * 1000))
        self._survey_limit = asyncio.Semaphore(_SURVEY_CONCURRENCY)
        self.waiting = False

    async def _claim(self, event_id: str, mode: str = "claim") -> list[Any]:
        keys = event_keys(event_id)
        async with self._survey_limit:
            reply: list[Any] = await self._lease(
                keys=[keys.config, keys.outbox, keys.outbox_lease],
                args=[self.owner, self._lease_ms, mode],
            )
        return reply

    async def event_ids(self) -> list[str]:
        """Events that may have an outbox: configured ones, and deleted ones not yet drained
        (two reads: the sets live in different Redis Cluster slots)."""
        found: set[str] = set()
        for name in (OUTBOXES_SET, EVENTS_SET):
            found.update(_text(member) for member in await self.redis.smembers(name))
        return sorted(found)

    async def survey(self, *, claim: bool = True) -> list[str]:
        """Measure every outbox (the gauges) and, with ``claim``, take or renew the leases:
        the events whose outbox this replica relays now, with records waiting. Sets
        ``waiting`` (records wait in some outbox)."""
        event_ids = await self.event_ids()
        mode = "claim" if claim else "measure"
        replies = await asyncio.gather(*(self._claim(e, mode) for e in event_ids))
        owned: list[str] = []
        depth, oldest_ms, gone = 0, 0, []
        for event_id, (mine, waiting, age_ms, deleted) in zip(event_ids, replies, strict=True):
            depth += int(waiting)
            oldest_ms = max(oldest_ms, int(age_ms))
            if int(mine) and int(waiting):
                owned.append(event_id)
            if int(deleted):
                gone.append(event_id)
        if gone:
            await self.redis.srem(OUTBOXES_SET, *gone)
        self.waiting = depth > 0
        self.metrics.outbox_depth.set(depth)
        self.metrics.outbox_oldest_age.set(oldest_ms / 1000)
        return owned

    async def relay_event(self, producer: Producer, event_id: str) -> int:
        """Send the event's waiting records in order; each leaves the outbox once acknowledged."""
        outbox = event_keys(event_id).outbox
        sent = 0
        for _ in range(_BATCHES_PER_ROUND):
            found = await self.redis.xrange(outbox, "-", "+", count=self.settings.batch_size)
            entries: list[Any] = list(found or [])
            if not entries:
                break
            key = event_id.encode()
            futures = [
                await producer.send(self.topic, orjson.dumps(outbox_record(event_id, f)), key)
                for _, f in entries
            ]
            await asyncio.gather(*futures)
            await self.redis.xdel(outbox, *(entry_id for entry_id, _ in entries))
            self.metrics.outbox_relayed.inc(len(entries))
            sent += len(entries)
            if len(entries) < self.settings.batch_size:
                break
        return sent

    async def run(self) -> None:
        """Measure and relay every ``interval_s`` forever. The producer is opened while
        records wait and reopened after any broker failure; leases are claimed only while it
        is open, so a replica that cannot reach Kafka leaves the relaying to one that can."""
        stack: AsyncExitStack | None = None
        producer: Producer | None = None
        retry_at = 0.0
        try:
            while True:
                owned: list[str] = []
                try:
                    owned = await self.survey(claim=producer is not None)
                    if self.waiting and producer is None and time.monotonic() >= retry_at:
                        stack = AsyncExitStack()
                        try:
                            # Bounded: a broker that accepts connections but does not answer
                            # must not hold the relay in one attempt.
                            async with asyncio.timeout(self.settings.attempt_timeout_s):
                                producer = await stack.enter_async_context(self._factory())
                        except Exception as exc:  # the broker is unreachable: records wait
                            await self._close(stack)
                            stack, retry_at = None, time.monotonic() + self.settings.retry_delay_s
                            self._failed("kafka", exc)
                        else:
                            owned = await self.survey()
                except RedisError as exc:
                    self._failed("redis", exc)
                for event_id in owned:
                    if producer is None:
                        break
                    try:
                        # Bounded too: aiokafka waits for a topic's metadata and for the
                        # acknowledgements on its own clocks; past this the attempt is a
                        # broker failure and the producer is reopened.
                        async with asyncio.timeout(self.settings.attempt_timeout_s):
                            await self.relay_event(producer, event_id)
                    except RedisError as exc:
                        self._failed("redis", exc)
                        break
                    except Exception as exc:  # any broker failure: reconnect later
                        self._failed("kafka", exc)
                        await self._close(stack)
                        stack, producer = None, None
                        retry_at = time.monotonic() + self.settings.retry_delay_s
                        break
                # A cancel some driver turned into an error above stops the relay all the same.
                raise_if_cancelled()
                await asyncio.sleep(self.settings.interval_s)
        finally:
            await self._close(stack)
            await self.release()

    def _failed(self, stage: str, exc: BaseException) -> None:
        self.metrics.outbox_relay_failures.labels(stage).inc()
        _LOG.warning("outbox_relay_failed", stage=stage, error=f"{type(exc).__name__}: {exc}")

    async def _close(self, stack: AsyncExitStack | None) -> None:
        # Bounded as an attempt is: aiokafka's stop first waits for the batches in flight,
        # and the timeout that ended the attempt has already fired.
        if stack is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self.settings.attempt_timeout_s):
                    await stack.aclose()

    async def release(self) -> None:
        """Give up this replica's leases (at shutdown), so another replica, or this one
        restarted, relays at once instead of after the lease runs out."""
        with contextlib.suppress(RedisError, OSError):
            for event_id in await self.event_ids():
                await self._claim(event_id, "release")
