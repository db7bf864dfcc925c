"""One SQS batch, one PostgreSQL transaction: a savepoint per message, one commit per batch.

A message that fails (malformed body, a refused statement, a deadlock) is rolled back to its
savepoint alone and reported; so is every later message of its FIFO group in this batch, whose
order SQS keeps by redelivering them after it. The rest of the batch, with its outbox rows,
commits once. When the transaction itself is lost (PostgreSQL restarted, the connection
killed, the commit refused), nothing of the batch was written and every message is reported
failed: SQS redelivers the whole batch, and ``processed_messages`` keeps each message applied
once whatever the number of deliveries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from urr_common.logs import get_logger
from urr_ticket_worker.booking import Result, apply_command_in
from urr_ticket_worker.messages import MalformedMessage, parse_command

if TYPE_CHECKING:
    import asyncpg

    from urr_ticket_worker.settings import BookingSettings

_LOG = get_logger(__name__)


@dataclass(frozen=True)
class BatchItem:
    """One SQS record: its message id, FIFO group and body."""

    message_id: str
    group: str
    body: str


@dataclass
class BatchOutcome:
    #: What each message that went through did, by message id.
    results: dict[str, Result] = field(default_factory=dict)
    #: The message ids to report in ``batchItemFailures``, in record order.
    failed: list[str] = field(default_factory=list)


class GroupGate:
    """FIFO order within a batch: after a group's first failure, its later records wait."""

    def __init__(self) -> None:
        self._stopped: set[str] = set()

    def open(self, group: str) -> bool:
        return group not in self._stopped

    def stop(self, group: str) -> None:
        self._stopped.add(group)


async def apply_batch(
    pool: asyncpg.Pool, items: Sequence[BatchItem], settings: BookingSettings
) -> BatchOutcome:
    """Apply ``items`` in order in one transaction; see the module docstring for failures."""
    if not items:
        return BatchOutcome()
    try:
        return await _apply_in_one_transaction(pool, items, settings)
    except Exception as exc:  # the transaction is gone: nothing of it was written
        _LOG.warning("batch_failed", messages=len(items), error=repr(exc))
        return BatchOutcome(failed=[item.message_id for item in items])


async def _apply_in_one_transaction(
    pool: asyncpg.Pool, items: Sequence[BatchItem], settings: BookingSettings
) -> BatchOutcome:
    outcome = BatchOutcome()
    gate = GroupGate()
    async with pool.acquire() as conn, conn.transaction():
        savepoint = False
        for item in items:
            if not gate.open(item.group):
                outcome.failed.append(item.message_id)
                continue
            try:
                command = parse_command(item.body)
            except MalformedMessage as exc:
                _LOG.warning("malformed_command", message_id=item.message_id, error=str(exc))
                outcome.failed.append(item.message_id)
                gate.stop(item.group)
                continue
            # Releasing the previous message's savepoint and opening this one's: one round trip.
            await conn.execute(
                "RELEASE SAVEPOINT message; SAVEPOINT message" if savepoint else "SAVEPOINT message"
            )
            savepoint = True
            try:
                result = await apply_command_in(conn, item.message_id, command, settings)
            except Exception as exc:
                # Raises (and so fails the whole batch) when the transaction itself is lost.
                await conn.execute("ROLLBACK TO SAVEPOINT message")
                _LOG.warning("command_failed", message_id=item.message_id, error=repr(exc))
                outcome.failed.append(item.message_id)
                gate.stop(item.group)
                continue
            outcome.results[item.message_id] = result
            _LOG.info(
                "command_applied",
                message_id=item.message_id,
                type=command.type,
                reservation_id=str(command.reservation_id),
                result=result,
            )
    return outcome
