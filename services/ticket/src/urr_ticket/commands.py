"""Sending booking commands to the SQS FIFO queue the worker Lambda consumes."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from urr_ticket_worker.messages import (
    CancelCommand,
    ReserveCommand,
    TransferCommand,
    command_deduplication_id,
)

#: Namespace of reservation ids derived from a request (see ``reservation_id_for``).
_RESERVATION_NAMESPACE = uuid.UUID("5c0f3e2a-8d7b-4b8e-9a51-0d7c6a1e2f44")


def reservation_id_for(event_id: str, user_id: str, holds: Iterable[tuple[str, str]]) -> uuid.UUID:
    """The same user reserving the same holds gets the same id, so a repeated request is
    the same reservation (and SQS drops the repeated message by its deduplication id);
    holding the seats again later starts a new one."""
    basis = "\n".join([event_id, user_id, *sorted(f"{seat}:{hold}" for seat, hold in holds)])
    return uuid.uuid5(_RESERVATION_NAMESPACE, basis)


class CommandQueue:
    """The FIFO queue, its URL resolved on first use (the queue may be created after us)."""

    def __init__(self, sqs: Any, queue_name: str) -> None:
        self._sqs = sqs
        self._queue_name = queue_name
        self._url: str | None = None

    async def url(self) -> str:
        if self._url is None:
            response = await self._sqs.get_queue_url(QueueName=self._queue_name)
            self._url = str(response["QueueUrl"])
        return self._url

    async def send(self, command: ReserveCommand | CancelCommand | TransferCommand) -> str:
        """Send ``command`` in its event's message group; returns the SQS message id."""
        response = await self._sqs.send_message(
            QueueUrl=await self.url(),
            MessageBody=command.to_json().decode(),
            MessageGroupId=command.event_id,
            MessageDeduplicationId=command_deduplication_id(command),
        )
        return str(response["MessageId"])
