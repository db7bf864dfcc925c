"""Sending booking commands to the SQS FIFO queue the worker Lambda consumes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from typing import Any

from urr_common.settings import SettingsError
from urr_ticket.settings import RESERVATION_KEY_MIN_LENGTH, ReservationIdSettings
from urr_ticket_worker.messages import (
    CancelCommand,
    ReserveCommand,
    TransferCommand,
    command_deduplication_id,
    command_group_id,
)


def keyed_uuid(key: bytes, basis: str) -> uuid.UUID:
    """A UUID (version 8, RFC 9562's custom layout) from the first 122 bits of
    HMAC-SHA256(``key``, ``basis``): stable for one key and basis, unguessable without the key."""
    digest = bytearray(hmac.new(key, basis.encode(), hashlib.sha256).digest()[:16])
    digest[6] = (digest[6] & 0x0F) | 0x80  # version 8
    digest[8] = (digest[8] & 0x3F) | 0x80  # RFC variant
    return uuid.UUID(bytes=bytes(digest))


class ReservationIds:
    """Derives reservation ids. The same user reserving the same holds gets the same id, so
    a repeated request is the same reservation (and SQS drops the repeated message by its
    deduplication id); holding the seats again later starts a new one. The id is keyed with a
    server secret, so a client can neither compute it ahead nor steer anything that depends
    on it."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the reservation-id key must be at least 16 bytes")
        self._key = key

    @classmethod
    def from_settings(
        cls, settings: ReservationIdSettings, environment: str = "local"
    ) -> ReservationIds:
        """The configured key, or a random one for this process in local and test; elsewhere
        a missing key is a ``SettingsError`` (every replica must derive the same ids)."""
        if settings.key is None:
            if environment not in ("local", "test"):
                raise SettingsError(
                    "set URR_RESERVATION_IDS__KEY (a random secret of at least"
                    f" {RESERVATION_KEY_MIN_LENGTH} characters, the same for every replica)"
                    f" in {environment}"
                )
            return cls(secrets.token_bytes(32))
        return cls(settings.key.get_secret_value().encode())

    def for_request(
        self, event_id: str, user_id: str, holds: Iterable[tuple[str, str]], attempt: int = 1
    ) -> uuid.UUID:
        """The reservation id of these holds' ``attempt``-th payment attempt (a retry after a
        declined card is a new reservation of the same holds; the first keeps its old id)."""
        # Ids never contain a newline (their patterns), so the basis is unambiguous.
        parts = [event_id, user_id, *sorted(f"{seat}:{hold}" for seat, hold in holds)]
        if attempt > 1:
            parts.append(f"attempt:{attempt}")
        return keyed_uuid(self._key, "\n".join(parts))


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
        """Send ``command`` in its (event, user) message group; returns the SQS message id."""
        response = await self._sqs.send_message(
            QueueUrl=await self.url(),
            MessageBody=command.to_json().decode(),
            MessageGroupId=command_group_id(command),
            MessageDeduplicationId=command_deduplication_id(command),
        )
        return str(response["MessageId"])
