"""The transactional outbox: rows written with a change, published to Kafka in id order.

Writers call ``add`` inside their transaction. ``OutboxPublisher.publish_once`` takes a
transaction-scoped advisory lock (so the relay process and a Lambda flushing after its batch
never interleave and order holds), reads the oldest unsent rows, sends them one by one and
waits for each acknowledgement (acks=all), then marks the sent prefix. When Kafka fails part
way, the sent prefix is marked, the rest waits for the next round: nothing is lost, order is
kept, and a row sent but not marked (a crash between the two) goes out again with the same
``messageId``, which consumers drop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from urr_common.logs import get_logger

if TYPE_CHECKING:
    import asyncpg

    from urr_ticket_worker.messages import WireModel
    from urr_ticket_worker.schema import Connection

_LOG = get_logger(__name__)
#: Fixed advisory lock key: at most one publisher at a time keeps the order of the log.
_OUTBOX_LOCK_KEY = 0x55_52_52_4F  # "URRO"


def row(topic: str, key: str, record: WireModel) -> tuple[uuid.UUID, str, str, str]:
    """The values of ``record``'s outbox row: message id, topic, key, JSON payload (for
    callers that fold the insert into a statement of their own)."""
    message_id = getattr(record, "message_id", None)
    if not isinstance(message_id, uuid.UUID):
        raise TypeError("outbox records carry a uuid message_id")
    return message_id, topic, key, record.to_json().decode()


async def add(conn: Connection, topic: str, key: str, record: WireModel) -> None:
    """Queue ``record`` for ``topic`` in the caller's transaction (a repeat id is a no-op)."""
    await conn.execute(
        "INSERT INTO outbox (message_id, topic, key, payload) VALUES ($1, $2, $3, $4::jsonb)"
        " ON CONFLICT (message_id) DO NOTHING",
        *row(topic, key, record),
    )


class Sender(Protocol):
    """What the publisher needs from a Kafka producer (aiokafka's ``send_and_wait``)."""

    async def send_and_wait(self, topic: str, value: bytes, key: bytes) -> object: ...


@dataclass(frozen=True)
class PublishResult:
    sent: int
    #: True when the outbox had more unsent rows than one round takes.
    more: bool
    #: The error that stopped the round part way, if any.
    error: BaseException | None = None


class OutboxPublisher:
    def __init__(self, pool: asyncpg.Pool, *, batch_size: int = 100) -> None:
        self._pool = pool
        self._batch_size = batch_size

    async def unsent(self) -> int:
        value = await self._pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        return int(value or 0)

    async def publish_once(self, sender: Sender) -> PublishResult:
        """One round; Kafka errors are returned (rows wait), PostgreSQL errors raise."""
        async with self._pool.acquire() as conn, conn.transaction():
            locked = await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", _OUTBOX_LOCK_KEY)
            if not locked:
                return PublishResult(sent=0, more=True)
            rows = await conn.fetch(
                "SELECT id, topic, key, payload::text AS payload FROM outbox"
                " WHERE sent_at IS NULL ORDER BY id LIMIT $1",
                self._batch_size + 1,
            )
            more = len(rows) > self._batch_size
            sent_ids: list[int] = []
            error: BaseException | None = None
            for row in rows[: self._batch_size]:
                try:
                    await sender.send_and_wait(
                        row["topic"], row["payload"].encode(), key=row["key"].encode()
                    )
                except Exception as exc:  # Kafka unavailable or timed out: the rest waits
                    error = exc
                    more = True
                    break
                sent_ids.append(row["id"])
            if sent_ids:
                await conn.execute(
                    "UPDATE outbox SET sent_at = now() WHERE id = ANY($1::bigint[])", sent_ids
                )
        if error is not None:
            _LOG.warning("outbox_publish_failed", sent=len(sent_ids), error=repr(error))
        return PublishResult(sent=len(sent_ids), more=more, error=error)
