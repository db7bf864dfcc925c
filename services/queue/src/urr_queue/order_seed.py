"""The random method's seed in public (issue 19): committed at once, revealed after the line.

The seed is drawn (or brought by the operator) when the event is created and never changes;
it stays secret while anyone may still arrive, since whoever knew it could pick an arrival id
with a small order key. What goes out through ``queue-events`` to the admission log
(``/v1/log/{eventId}/order-seed``):

- ``order_seed_committed`` (``SHA-256(seed)``) when the event starts using ``random`` (at
  creation or on a switch), before anyone queues by it;
- ``order_seed_revealed`` (the commitment again and the seed) when the operator reveals it
  (``POST /api/v1/admin/queue/{eventId}/order-seed/reveal``), which is refused with 409
  ``seed_reveal_too_early`` until the event takes nobody new (mode ``closed`` or method
  ``reject``) and nobody waits. From then on the event never opens with the random method
  again (409 ``order_seed_revealed``).

Each record has a fixed id, so a republished one is stored once. The admitted records of an
event ordered by key carry the admission's ``orderKey`` (``admission.py``), which the log puts
in the leaf and ``urr-verify audit --seed`` checks the order against.
"""

from __future__ import annotations

from typing import Any

from urr_common.fairness import seed_records
from urr_common.problems import Conflict
from urr_queue.handlers import no_event
from urr_queue.store import QueueStore

COMMITTED = "order_seed_committed"
REVEALED = "order_seed_revealed"


def committed_record(event_id: str, seed_hex: str) -> dict[str, Any]:
    return seed_records("", event_id, seed_hex)[0]


def revealed_record(event_id: str, seed_hex: str) -> dict[str, Any]:
    return seed_records("", event_id, seed_hex)[1]


async def reveal(store: QueueStore, event_id: str) -> str:
    """The seed (hex), once the line is over; a 409 problem before, 404 with no event."""
    reply = await store.reveal_order_seed(event_id)
    if reply[0] == "no_event":
        raise no_event(event_id)
    if reply[0] == "too_early":
        mode, method, waiting = reply[1], reply[2], int(reply[3])
        raise Conflict(
            "the order seed is revealed once the line is over: set mode closed (or method "
            "reject) and wait until nobody waits",
            code="seed_reveal_too_early",
            mode=mode,
            queue_method=method,
            waiting=waiting,
        )
    return reply[1]
