"""Booking commands leave in ``SendMessageBatch`` calls (issue 22): on real moto SQS,
PostgreSQL and Redis, a burst of reservations is queued exactly once each, batches hold at
most 10 entries, and an entry SQS refuses answers only its own request."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from urr_common.identity_testing import act_as
from urr_ticket.appkeys import COMMANDS_KEY
from urr_ticket.commands import Command, CommandNotQueued, CommandQueue
from urr_ticket_worker.booking import apply_command
from urr_ticket_worker.messages import (
    CancelCommand,
    ReserveCommand,
    command_deduplication_id,
    command_group_id,
    parse_command,
    utc_now,
)
from urr_ticket_worker.settings import BookingSettings
from urr_ticket_worker.testing import Queues, sqs_client

pytestmark = pytest.mark.integration


class CountingSqs:
    """The real client, with every ``SendMessageBatch`` recorded; entries whose body names a
    user in ``refuse`` are answered as SQS answers an entry it refused (the rest are sent)."""

    def __init__(self, sqs: Any, refuse: frozenset[str] = frozenset()) -> None:
        self._sqs = sqs
        self.refuse = refuse
        self.batches: list[list[dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sqs, name)

    async def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:
        self.batches.append(Entries)
        refused = [e for e in Entries if parse_command(e["MessageBody"]).user_id in self.refuse]
        sent = [e for e in Entries if e not in refused]
        answer: dict[str, Any] = {"Successful": [], "Failed": []}
        if sent:
            answer = await self._sqs.send_message_batch(QueueUrl=QueueUrl, Entries=sent)
            answer.setdefault("Failed", [])
        answer["Failed"] = [
            *answer["Failed"],
            *(
                {"Id": e["Id"], "SenderFault": False, "Code": "InternalError", "Message": "x"}
                for e in refused
            ),
        ]
        return answer


async def drain(moto_endpoint: str, queues: Queues) -> list[dict[str, Any]]:
    """Every message on the queue (FIFO: received in order within each group)."""
    out: list[dict[str, Any]] = []
    async with sqs_client(moto_endpoint) as sqs:
        while True:
            response = await sqs.receive_message(
                QueueUrl=queues.url, MaxNumberOfMessages=10, MessageSystemAttributeNames=["All"]
            )
            messages = response.get("Messages", [])
            if not messages:
                return out
            out.extend(messages)
            await sqs.delete_message_batch(
                QueueUrl=queues.url,
                Entries=[
                    {"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]}
                    for i, m in enumerate(messages)
                ],
            )


def reserve_command(user_id: str) -> ReserveCommand:
    return ReserveCommand(
        reservation_id=uuid.uuid4(),
        event_id="demo",
        user_id=user_id,
        seat_ids=["A1"],
        requested_at=utc_now(),
    )


async def test_23_commands_at_once_leave_in_3_batches_in_order(
    moto_endpoint: str, queues: Queues
) -> None:
    async with sqs_client(moto_endpoint) as sqs:
        counting = CountingSqs(sqs)
        commands = CommandQueue(counting, queues.name)
        sent: list[Command] = [reserve_command(f"u{i % 5}") for i in range(20)]
        # One user's reserve then cancel, in one burst: the group keeps its order.
        follow_up = CancelCommand(
            reservation_id=sent[0].reservation_id, event_id="demo", user_id="u0"
        )
        sent += [follow_up, reserve_command("u9"), reserve_command("u9")]
        ids = await asyncio.gather(*(commands.send(command) for command in sent))
    assert len(set(ids)) == 23
    assert [len(batch) for batch in counting.batches] == [10, 10, 3]
    for batch in counting.batches:
        for entry in batch:
            command = parse_command(entry["MessageBody"])
            assert entry["MessageDeduplicationId"] == command_deduplication_id(command)
            assert entry["MessageGroupId"] == command_group_id(command)
    messages = await drain(moto_endpoint, queues)
    assert sorted(m["MessageId"] for m in messages) == sorted(ids)
    assert_group_order(messages, sent)


def assert_group_order(messages: list[dict[str, Any]], sent: list[Command]) -> None:
    """Each message group's messages arrived in the order its commands were sent."""
    by_group: dict[str, list[str]] = {}
    for message in messages:
        group = message["Attributes"]["MessageGroupId"]
        by_group.setdefault(group, []).append(message["Attributes"]["MessageDeduplicationId"])
    for group, dedup_ids in by_group.items():
        expected = [command_deduplication_id(c) for c in sent if command_group_id(c) == group]
        assert dedup_ids == expected, group


async def test_a_refused_entry_fails_only_its_own_send(moto_endpoint: str, queues: Queues) -> None:
    async with sqs_client(moto_endpoint) as sqs:
        commands = CommandQueue(CountingSqs(sqs, frozenset({"bad"})), queues.name)
        outcomes = await asyncio.gather(
            commands.send(reserve_command("good1")),
            commands.send(reserve_command("bad")),
            commands.send(reserve_command("good2")),
            return_exceptions=True,
        )
    assert isinstance(outcomes[1], CommandNotQueued)
    assert isinstance(outcomes[0], str)
    assert isinstance(outcomes[2], str)
    users = {parse_command(m["Body"]).user_id for m in await drain(moto_endpoint, queues)}
    assert users == {"good1", "good2"}


async def test_a_missing_queue_fails_every_send_of_the_batch(moto_endpoint: str) -> None:
    async with sqs_client(moto_endpoint) as sqs:
        commands = CommandQueue(sqs, f"missing-{uuid.uuid4().hex[:8]}.fifo")
        outcomes = await asyncio.gather(
            *(commands.send(reserve_command(f"u{i}")) for i in range(3)),
            return_exceptions=True,
        )
    assert all(isinstance(outcome, Exception) for outcome in outcomes)


async def hold_and_reserve(client: Any, user_id: str, seat: str) -> Any:
    held = await client.post(f"/api/v1/seats/demo/{seat}/hold", headers=act_as(user_id))
    assert held.status == 200, await held.text()
    return await client.post(
        "/api/v1/reservations/demo", json={"seatIds": [seat]}, headers=act_as(user_id)
    )


async def test_a_burst_of_reservations_is_queued_once_each_in_batches(
    client: Any, db: asyncpg.Pool, moto_endpoint: str, queues: Queues, monkeypatch: Any
) -> None:
    commands = client.app[COMMANDS_KEY]
    counting = CountingSqs(commands._sqs)
    monkeypatch.setattr(commands, "_sqs", counting)
    seats = [f"{row}{n}" for row in "ABC" for n in range(1, 9)]  # 24 users, a seat each
    users = [f"burst-{i}" for i in range(len(seats))]
    answers = await asyncio.gather(*map(hold_and_reserve, [client] * 24, users, seats))
    assert [a.status for a in answers] == [202] * 24
    bodies = [await a.json() for a in answers]
    # Each user asks again at once: the same reservation, dropped by SQS as a duplicate.
    again = await asyncio.gather(
        *(
            client.post("/api/v1/reservations/demo", json={"seatIds": [s]}, headers=act_as(u))
            for u, s in zip(users, seats, strict=True)
        )
    )
    assert [(await a.json())["reservationId"] for a in again] == [
        b["reservationId"] for b in bodies
    ]
    assert all(len(batch) <= 10 for batch in counting.batches)
    assert sum(map(len, counting.batches)) == 48
    assert len(counting.batches) < 48  # batched, not one call per command
    messages = await drain(moto_endpoint, queues)
    rids = sorted(str(parse_command(m["Body"]).reservation_id) for m in messages)
    assert rids == sorted(b["reservationId"] for b in bodies)
    assert all(
        m["Attributes"]["MessageDeduplicationId"] == str(parse_command(m["Body"]).reservation_id)
        for m in messages
    )
    # The worker books each once, and drops a redelivered copy.
    settings = BookingSettings()
    for message in messages:
        command = parse_command(message["Body"])
        assert await apply_command(db, message["MessageId"], command, settings) == "applied"
        assert await apply_command(db, message["MessageId"], command, settings) != "applied"
    statuses = await db.fetch("SELECT status, count(*) AS n FROM reservations GROUP BY status")
    assert {row["status"]: row["n"] for row in statuses} == {"awaiting_payment": 24}


async def test_a_refused_entry_is_a_503_for_that_request_alone(
    client: Any, db: asyncpg.Pool, moto_endpoint: str, queues: Queues, monkeypatch: Any
) -> None:
    commands = client.app[COMMANDS_KEY]
    monkeypatch.setattr(commands, "_sqs", CountingSqs(commands._sqs, frozenset({"unlucky"})))
    users = ["lucky-1", "unlucky", "lucky-2"]
    answers = await asyncio.gather(
        *(hold_and_reserve(client, u, s) for u, s in zip(users, ["D1", "D2", "D3"], strict=True))
    )
    assert [a.status for a in answers] == [202, 503, 202]
    assert answers[1].content_type == "application/problem+json"
    assert (await answers[1].json())["code"] == "booking_queue_unavailable"
    rows = await db.fetch("SELECT user_id, status FROM reservations ORDER BY user_id")
    assert [(r["user_id"], r["status"]) for r in rows] == [
        ("lucky-1", "pending"),
        ("lucky-2", "pending"),
    ]
    users_queued = {parse_command(m["Body"]).user_id for m in await drain(moto_endpoint, queues)}
    assert users_queued == {"lucky-1", "lucky-2"}


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"seatIds": []}, 422),
        ({"seatIds": ["E1"], "extra": 1}, 422),
        ({"seatIds": ["E1", "E1"]}, 422),
        ({"seatIds": ["E1"], "attempt": 0}, 422),
        ("not json", 400),
    ],
)
async def test_bad_input_is_still_a_4xx_problem(
    client: Any, db: asyncpg.Pool, body: Any, status: int
) -> None:
    assert (await client.post("/api/v1/seats/demo/E1/hold", headers=act_as("u1"))).status == 200
    if isinstance(body, str):
        response = await client.post(
            "/api/v1/reservations/demo",
            data=body,
            headers=act_as("u1", **{"Content-Type": "application/json"}),
        )
    else:
        response = await client.post("/api/v1/reservations/demo", json=body, headers=act_as("u1"))
    assert response.status == status, await response.text()
    assert response.content_type == "application/problem+json"
    assert await db.fetchval("SELECT count(*) FROM reservations") == 0


class SlowSqs(CountingSqs):
    """The real client behind a slower network: every call takes ``delay_s`` more."""

    def __init__(self, sqs: Any, delay_s: float) -> None:
        super().__init__(sqs)
        self.delay_s = delay_s
        self.under_way = 0
        self.most_under_way = 0

    async def send_message_batch(self, QueueUrl: str, Entries: list[dict[str, Any]]) -> Any:
        self.under_way += 1
        self.most_under_way = max(self.most_under_way, self.under_way)
        try:
            await asyncio.sleep(self.delay_s)
            return await super().send_message_batch(QueueUrl=QueueUrl, Entries=Entries)
        finally:
            self.under_way -= 1


async def test_commands_arriving_apart_while_calls_are_under_way_fill_batches(
    moto_endpoint: str, queues: Queues
) -> None:
    """Replies of a burst come milliseconds apart, each after its window: with two calls
    under way the next batch gathers what comes meanwhile instead of leaving by ones."""
    async with sqs_client(moto_endpoint) as sqs:
        slow = SlowSqs(sqs, delay_s=0.05)
        commands = CommandQueue(slow, queues.name, batch_window_s=0.002, max_calls=2)
        await commands.url()
        sent = [reserve_command(f"u{i % 4}") for i in range(30)]

        async def later(index: int, command: Command) -> str:
            await asyncio.sleep(index * 0.005)  # 5 ms apart: more than the window
            return await commands.send(command)

        ids = await asyncio.gather(*(later(i, c) for i, c in enumerate(sent)))
        # A lone command still leaves after its window, with nothing under way.
        started = asyncio.get_running_loop().time()
        alone = reserve_command("alone")
        await commands.send(alone)
        assert asyncio.get_running_loop().time() - started < 0.05 + 1.0
        await commands.drain()
    assert len(set(ids)) == 30
    assert slow.most_under_way <= 2
    # 30 commands over 150 ms with 50 ms calls: a handful of calls, not one per command.
    assert len(slow.batches) <= 10, [len(b) for b in slow.batches]
    assert all(len(batch) <= 10 for batch in slow.batches)
    messages = await drain(moto_endpoint, queues)
    assert len(messages) == 31
    assert_group_order(messages, [*sent, alone])


async def test_without_a_limit_on_calls_the_same_commands_leave_by_ones(
    moto_endpoint: str, queues: Queues
) -> None:
    """The contrast (what the limit changes): the window alone sends one call per window."""
    async with sqs_client(moto_endpoint) as sqs:
        slow = SlowSqs(sqs, delay_s=0.05)
        commands = CommandQueue(slow, queues.name, batch_window_s=0.002)
        await commands.url()

        async def later(index: int) -> str:
            await asyncio.sleep(index * 0.01)  # 10 ms apart: no window gathers two
            return await commands.send(reserve_command(f"u{index % 4}"))

        await asyncio.gather(*(later(i) for i in range(30)))
    assert len(slow.batches) > 15
