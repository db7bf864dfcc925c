"""The random method's grants and waivers, published to the admission log (issue 19).

Tier 1 draws its random order itself, so Tier 2's log of admissions shows only the order of
the passes, not that the draw followed the keys. Each random cycle therefore publishes, on the
``queue-events`` topic the admission log consumes (keyed by event, so one event's records
keep their order), one record per decision:

- ``tier1_waived`` (reason ``abandoned``) for each place the cycle gave up before its draw,
  with the place's last check (``lastSeen``, epoch ms), published before the cycle's grants;
- ``tier1_granted`` for each grant, in grant order, with the draw it came from: ``draw`` (the
  draw's first grant sequence, which names it), ``floor`` and ``top`` (the numbers
  ``floor < n <= top`` were read) and ``cutoff`` (epoch ms: a place whose last check is older
  was not drawn, it had stopped checking);
- ``tier1_waived`` (reason ``grant_lost``) for a grant whose write found the place given up
  meanwhile (a racing advancer): its sequence number is spent, and says so;
- ``tier1_passed`` for a place the draw did not consider although its key is smaller than
  one it granted: it had stopped checking (``lastSeen`` before ``cutoff``) but the cycle's
  limit of places given up was reached, so it still holds its number (and may check again
  and be drawn later). Logged before the draw's grants, with the draw's fields.

Every record names the place by its number and its ``arrival`` alias (``queueing.
arrival_alias``, never the request id) and carries its order key, so ``urr-verify audit``
recomputes each key from the revealed seed and checks that each draw granted the smallest keys
among the places still waiting in it. Record ids (``tier1:<epoch>:...``) make a republished
record append nothing.

Tier 1's seed goes public the same way (its own: Tier 1 draws the ``orderSeed`` it keeps,
which the operator may or may not share with the queue): ``tier1_order_seed_committed``
(``SHA-256(seed)``) when an event starts using ``random``, and ``tier1_order_seed_revealed``
(the commitment again and the seed) from the admin reveal route once the line is over. A
draw never runs ahead of its commitment: before a container's first random cycle of an
event, the commitment must have been acknowledged by the broker (``commit_seed``); until it
is, the cycle grants nothing (``seed_not_committed``). Once acknowledged, a later broker
outage keeps grant records pending as before; the line goes on, and the log receives them
after the commitment, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from urr_common.fairness import seed_records
from urr_common.settings import KafkaSettings
from urr_vwr_lambda.queueing import PositionRow, draw_key


@dataclass(frozen=True)
class Draw:
    """What one random cycle read and decided on (all times in epoch ms)."""

    event_id: str
    epoch: int
    #: The sequence of the draw's first grant: names the draw (two can share a millisecond).
    first_seq: int
    floor: int
    top: int
    cutoff_ms: int
    at_ms: int


def _place(draw: Draw, seed: bytes, row: PositionRow) -> dict[str, Any]:
    key, alias = draw_key(seed, row.request_id)
    return {
        "eventId": draw.event_id,
        "epoch": draw.epoch,
        "place": row.position,
        "arrival": alias,
        "orderKey": key,
        "at": draw.at_ms,
    }


def waiver_records(
    draw: Draw, seed: bytes, given_up: Iterable[PositionRow]
) -> list[dict[str, Any]]:
    """``tier1_waived`` records of the places this cycle gave up before its draw."""
    return [
        {
            **_place(draw, seed, row),
            "type": "tier1_waived",
            "id": f"tier1:{draw.epoch}:waive:{row.position}",
            "reason": "abandoned",
            "lastSeen": row.last_seen * 1000,
        }
        for row in given_up
    ]


def grant_records(
    draw: Draw, seed: bytes, granted: Sequence[tuple[int, PositionRow, bool]]
) -> list[dict[str, Any]]:
    """One record per ``(sequence, place, written)`` of the draw, in grant order: a grant,
    or the ``grant_lost`` waiver of a sequence whose place was given up meanwhile."""
    records = []
    for seq, row, written in granted:
        record = {**_place(draw, seed, row), "seq": seq}
        if written:
            record |= {
                "type": "tier1_granted",
                "id": f"tier1:{draw.epoch}:grant:{seq}",
                "draw": draw.first_seq,
                "floor": draw.floor,
                "top": draw.top,
                "cutoff": draw.cutoff_ms,
            }
        else:
            record |= {
                "type": "tier1_waived",
                "id": f"tier1:{draw.epoch}:lost:{seq}",
                "reason": "grant_lost",
            }
        records.append(record)
    return records


def passed_records(
    draw: Draw, seed: bytes, quiet: Iterable[PositionRow], granted: Sequence[PositionRow]
) -> list[dict[str, Any]]:
    """``tier1_passed`` records of the quiet places whose key is below the draw's largest
    grant (the only ones an auditor would otherwise see passed over)."""
    if not granted:
        return []
    largest = max(draw_key(seed, row.request_id) for row in granted)
    return [
        {
            **_place(draw, seed, row),
            "type": "tier1_passed",
            "id": f"tier1:{draw.epoch}:pass:{draw.first_seq}:{row.position}",
            "lastSeen": row.last_seen * 1000,
            "draw": draw.first_seq,
            "floor": draw.floor,
            "top": draw.top,
            "cutoff": draw.cutoff_ms,
        }
        for row in quiet
        if draw_key(seed, row.request_id) < largest
    ]


def seed_committed_record(event_id: str, seed_hex: str) -> dict[str, Any]:
    """Tier 1's commitment to its seed (a fixed id: republished, it is stored once)."""
    return seed_records("tier1_", event_id, seed_hex)[0]


def seed_revealed_record(event_id: str, seed_hex: str) -> dict[str, Any]:
    return seed_records("tier1_", event_id, seed_hex)[1]


class GrantLogUnavailable(RuntimeError):
    """The records could not be handed to Kafka (they stay pending and are sent again)."""


class GrantLogPublisher:
    """Sends records to the topic with ``acks=all`` from the advancer's synchronous code.

    The producer lives on a private event loop in this object (one per warm container); each
    ``publish`` waits until the broker has every record or raises ``GrantLogUnavailable``.
    Records that failed are kept and sent first next time (``pending``): a broker outage
    delays the log, it does not leave gaps in it while the container lives.
    """

    def __init__(self, kafka: KafkaSettings, topic: str, *, timeout_s: float) -> None:
        self._kafka = kafka
        self._topic = topic
        self._timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._producer: Any = None
        self._lock = threading.Lock()
        self.pending: list[dict[str, Any]] = []
        #: Ids of seed commitments the broker acknowledged (from this container).
        self.committed: set[str] = set()

    def commit_seed(self, event_id: str, seed_hex: str) -> None:
        """Make sure the event's seed commitment reached the broker (once per container);
        ``GrantLogUnavailable`` when it did not (the caller must not draw yet)."""
        record = seed_committed_record(event_id, seed_hex)
        if record["id"] in self.committed:
            return
        queued = any(item.get("id") == record["id"] for item in self.pending)
        self.publish([] if queued else [record])
        self.committed.add(record["id"])

    def publish(self, records: Sequence[dict[str, Any]]) -> int:
        """Send the pending records and ``records``, in order; how many were sent."""
        with self._lock:
            self.pending.extend(records)
            if not self.pending:
                return 0
            batch = list(self.pending)
            try:
                self._loop.run_until_complete(
                    asyncio.wait_for(self._send(batch), timeout=self._timeout_s)
                )
            except Exception as exc:  # any client or broker failure: keep them pending
                self._loop.run_until_complete(self._drop_producer())
                raise GrantLogUnavailable(f"{type(exc).__name__}: {exc}") from exc
            del self.pending[: len(batch)]
            return len(batch)

    async def _send(self, batch: list[dict[str, Any]]) -> None:
        if self._producer is None:
            from urr_common.clients import kafka_producer

            # Kept before it starts, so a start that fails is stopped (and its sockets closed).
            self._producer = kafka_producer(self._kafka)
            await self._producer.start()
        sent = [
            await self._producer.send(
                self._topic, orjson.dumps(record), key=str(record["eventId"]).encode()
            )
            for record in batch
        ]
        await asyncio.gather(*sent)

    async def _drop_producer(self) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            with contextlib.suppress(Exception):  # thrown away after a failure anyway
                await producer.stop()

    def close(self) -> None:
        with self._lock:
            self._loop.run_until_complete(self._drop_producer())
            self._loop.close()
