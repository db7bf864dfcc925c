"""``queue-events`` on Kafka without ever holding up a request.

Records go into a bounded in-memory buffer (``publish`` never waits and never raises); a
background task drains it into an aiokafka producer. A full buffer or a failed send drops
records and counts them. Kafka being down never makes the service unready: the drain task
keeps reconnecting on its own. Each record carries a unique ``id`` so consumers can drop the
duplicates at-least-once delivery brings (the broker has no idempotent producer).

The records the public admission log reads (``admitted``, ``waived``, the pre-queue's) do not
take this path while a broker is configured: the scripts write them into the event's Redis
outbox and ``outbox.py`` relays them, never dropping one (issue 19).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from enum import StrEnum
from typing import Any, Protocol

import orjson

from urr_common.logs import get_logger
from urr_queue.metrics import QueueMetrics

_LOG = get_logger(__name__)
#: Records sent before their acknowledgements are awaited together.
_BATCH = 500


class EventType(StrEnum):
    ENTERED = "entered"
    ADMITTED = "admitted"
    LEFT = "left"
    EXPIRED = "expired"
    #: Tier-1 numbers the order hold gave up on (no user: nobody holds them).
    WAIVED = "waived"


class Producer(Protocol):
    async def send(self, topic: str, value: bytes, key: bytes) -> asyncio.Future[Any]: ...


ProducerFactory = Callable[[], AbstractAsyncContextManager[Producer]]


def event_record(
    kind: EventType,
    event_id: str,
    user_id: str,
    *,
    at_ms: int,
    position: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "type": kind.value,
        "eventId": event_id,
        "userId": user_id,
        "position": position,
        "at": at_ms,
        **extra,
    }


def waiver_record(event_id: str, numbers: Sequence[int], *, at_ms: int) -> dict[str, Any]:
    """The order hold stopped waiting for ``numbers``: later ones went ahead of them, and one
    that still arrives is admitted behind them (the admission log writes a waiver per number)."""
    return {
        "id": uuid.uuid4().hex,
        "type": EventType.WAIVED.value,
        "eventId": event_id,
        "queueNumbers": list(numbers),
        "reason": "order_hold",
        "at": at_ms,
    }


class QueueEventPublisher:
    def __init__(
        self,
        topic: str,
        *,
        buffer_size: int,
        metrics: QueueMetrics,
        producer_factory: ProducerFactory | None,
        retry_delay_s: float = 2.0,
    ) -> None:
        self.topic = topic
        self.metrics = metrics
        self._buffer: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=buffer_size)
        self._factory = producer_factory
        self._retry_delay_s = retry_delay_s
        self._connected = False

    @property
    def pending(self) -> int:
        return self._buffer.qsize()

    def publish(self, record: dict[str, Any]) -> None:
        """Queue ``record`` for sending; drop it (counted) when the buffer is full."""
        if self._factory is None:
            return
        try:
            self._buffer.put_nowait(record)
        except asyncio.QueueFull:
            self.metrics.events_dropped.labels("buffer_full").inc()

    async def run(self) -> None:
        """Drain the buffer forever, reconnecting after any broker failure."""
        if self._factory is None:
            return
        while True:
            try:
                async with self._factory() as producer:
                    _LOG.info("queue_events_connected", topic=self.topic)
                    self._connected = True
                    while True:
                        await self._send_batch(producer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any broker or network failure: count, wait, reconnect
                self._connected = False
                _LOG.warning("queue_events_unavailable", error=f"{type(exc).__name__}: {exc}")
                await asyncio.sleep(self._retry_delay_s)

    async def _send_batch(self, producer: Producer) -> None:
        batch = [await self._buffer.get()]
        while len(batch) < _BATCH and not self._buffer.empty():
            batch.append(self._buffer.get_nowait())
        try:
            futures = []
            for record in batch:
                key = str(record.get("eventId", "")).encode()
                futures.append(await producer.send(self.topic, orjson.dumps(record), key))
            await asyncio.gather(*futures)
        except Exception:
            self.metrics.events_dropped.labels("send_failed").inc(len(batch))
            raise
        finally:
            for _ in batch:
                self._buffer.task_done()
        self.metrics.events_published.inc(len(batch))

    async def drain(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for the buffer to empty (at shutdown, broker reachable)."""
        if not self._connected:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._buffer.join()
