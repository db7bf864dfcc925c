"""Sending booking commands to the SQS FIFO queue the worker Lambda consumes."""

from __future__ import annotations

import asyncio
import functools
import hashlib
import hmac
import secrets
import uuid
from collections.abc import Iterable
from typing import Any, NamedTuple

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


Command = ReserveCommand | CancelCommand | TransferCommand
#: SQS takes at most 10 entries and 256 KiB of bodies in one ``SendMessageBatch``.
MAX_BATCH_ENTRIES = 10
MAX_BATCH_BYTES = 256 * 1024


class CommandNotQueued(RuntimeError):
    """SQS refused this command's entry of a batch (the others may have been queued)."""


class _Entry(NamedTuple):
    body: str
    group: str
    deduplication_id: str
    answer: asyncio.Future[str]


class CommandQueue:
    """The FIFO queue, its URL resolved on first use (the queue may be created after us).

    ``send`` does not call SQS itself: the commands sent within ``batch_window_s`` (0: within
    one event-loop tick) go out together in ``SendMessageBatch`` calls of up to 10 entries, in
    the order they were sent, so a booking burst of 100 reservations costs ~10 SQS calls
    instead of 100. Each entry keeps its message group and deduplication id (exactly once
    as before: SQS drops a repeated entry by its id, the worker a repeated reservation by
    its status). One group keeps its order: SQS keeps it within a batch, and a batch with a
    group that an earlier batch still under way also carries is sent once that one is
    answered. Every caller gets its own answer: a failed call fails the commands of that
    batch, an entry SQS refused fails only its own ``send`` (``CommandNotQueued``).

    With ``max_calls``, a batch short of 10 entries leaves only while fewer calls than that
    are under way; otherwise it waits for one to be answered, gathering the commands sent
    meanwhile (group commit). A lone command still leaves after the window; in a burst,
    whose replies come milliseconds apart, the batches fill up instead of leaving by ones
    and twos (issue 22: each call costs the client about a millisecond of CPU)."""

    def __init__(
        self,
        sqs: Any,
        queue_name: str,
        *,
        batch_window_s: float = 0.0,
        max_calls: int | None = None,
    ) -> None:
        self._sqs = sqs
        self._queue_name = queue_name
        self._url: str | None = None
        self._lookup: asyncio.Future[str] | None = None
        self._window_s = batch_window_s
        self._max_calls = max_calls
        self._waiting: list[tuple[Command, asyncio.Future[str]]] = []
        self._flush: asyncio.Handle | asyncio.TimerHandle | None = None
        self._calls: set[asyncio.Task[None]] = set()
        #: The last batch under way that carries each message group.
        self._last_of_group: dict[str, asyncio.Task[None]] = {}

    async def url(self) -> str:
        if self._url is None:
            # One lookup for the callers that come meanwhile: they go on in their order, so
            # a first burst is batched (and kept in order) like every later one.
            if self._lookup is None:
                self._lookup = asyncio.ensure_future(self._look_up())
            lookup = self._lookup
            try:
                self._url = await asyncio.shield(lookup)
            finally:
                if lookup.done():  # a failed lookup is tried again by the next caller
                    self._lookup = None
        return self._url

    async def _look_up(self) -> str:
        response = await self._sqs.get_queue_url(QueueName=self._queue_name)
        return str(response["QueueUrl"])

    async def send(self, command: Command) -> str:
        """Send ``command`` in its (event, user) message group; returns the SQS message id."""
        await self.url()  # a missing queue fails this caller alone, before anything waits
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[str] = loop.create_future()
        self._waiting.append((command, answer))
        if len(self._waiting) >= MAX_BATCH_ENTRIES:
            self._send_waiting()
        elif self._flush is None:
            self._flush = (
                loop.call_later(self._window_s, self._send_waiting)
                if self._window_s > 0
                else loop.call_soon(self._send_waiting)
            )
        return await answer

    async def drain(self) -> None:
        """Send what waits and wait for the calls under way (before the client closes)."""
        self._send_waiting(force=True)
        while self._calls or self._waiting:
            await asyncio.gather(*self._calls, return_exceptions=True)
            self._send_waiting(force=True)

    def _send_waiting(self, *, force: bool = False) -> None:
        """Send what waits: all of it, or while ``max_calls`` calls are under way, only its
        full batches (the rest leaves when a call is answered, ``_sent``)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        waiting = self._waiting
        if force or self._max_calls is None or len(self._calls) < self._max_calls:
            self._waiting = []
        else:
            full = len(waiting) - len(waiting) % MAX_BATCH_ENTRIES
            if not full:
                return
            waiting, self._waiting = waiting[:full], waiting[full:]
        loop = asyncio.get_running_loop()
        for batch in _batches(waiting):
            groups = {entry.group for entry in batch}
            after = {self._last_of_group[g] for g in groups if g in self._last_of_group}
            call = loop.create_task(self._send_batch(batch, after))
            self._calls.add(call)
            for group in groups:
                self._last_of_group[group] = call
            call.add_done_callback(functools.partial(self._sent, groups))

    def _sent(self, groups: set[str], call: asyncio.Task[None]) -> None:
        self._calls.discard(call)
        for group in groups:
            if self._last_of_group.get(group) is call:
                del self._last_of_group[group]
        if self._waiting and self._flush is None:  # their window passed while calls were full
            self._send_waiting()

    async def _send_batch(self, batch: list[_Entry], after: set[asyncio.Task[None]]) -> None:
        answers = {str(index): entry.answer for index, entry in enumerate(batch)}
        try:
            if after:  # a group of this batch is in one still under way: keep its order
                await asyncio.wait(after)
            response = await self._sqs.send_message_batch(
                QueueUrl=await self.url(),
                Entries=[
                    {
                        "Id": str(index),
                        "MessageBody": entry.body,
                        "MessageGroupId": entry.group,
                        "MessageDeduplicationId": entry.deduplication_id,
                    }
                    for index, entry in enumerate(batch)
                ],
            )
        except Exception as exc:  # SQS unreachable or the queue gone: nothing was queued
            for answer in answers.values():
                _fail(answer, exc)
            return
        except BaseException:  # cancelled (shutting down): whether it left is unknown
            for answer in answers.values():
                answer.cancel()
            raise
        for success in response.get("Successful", ()):
            taken = _take(answers, success["Id"])
            if taken is not None and not taken.done():
                taken.set_result(str(success["MessageId"]))
        for failure in response.get("Failed", ()):
            taken = _take(answers, failure["Id"])
            if taken is not None:
                _fail(
                    taken,
                    CommandNotQueued(
                        f"SQS refused the command: {failure.get('Code')} {failure.get('Message')}"
                    ),
                )
        for answer in answers.values():  # neither successful nor failed: not known queued
            _fail(answer, CommandNotQueued("SQS answered nothing for this command"))


def _take(answers: dict[str, asyncio.Future[str]], entry_id: object) -> asyncio.Future[str] | None:
    """The answer of the entry SQS names (once: a repeated id is ignored)."""
    key = str(entry_id)
    return answers.pop(key) if key in answers else None


def _fail(answer: asyncio.Future[str], exc: BaseException) -> None:
    if not answer.done():
        answer.set_exception(exc)


def _batches(waiting: list[tuple[Command, asyncio.Future[str]]]) -> list[list[_Entry]]:
    """``waiting`` in order, cut into batches SQS takes (10 entries, 256 KiB of bodies)."""
    batches: list[list[_Entry]] = []
    current: list[_Entry] = []
    size = 0
    for command, answer in waiting:
        if answer.done():  # its request went away before the batch left
            continue
        raw = command.to_json()
        body, length = raw.decode(), len(raw)
        if current and (len(current) == MAX_BATCH_ENTRIES or size + length > MAX_BATCH_BYTES):
            batches.append(current)
            current, size = [], 0
        current.append(
            _Entry(body, command_group_id(command), command_deduplication_id(command), answer)
        )
        size += length
    if current:
        batches.append(current)
    return batches
