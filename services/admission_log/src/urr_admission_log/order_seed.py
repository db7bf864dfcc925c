"""The random method's seed from ``queue-events`` (issue 19), stored once, served as one document.

The queue publishes ``order_seed_committed`` (the commitment ``SHA-256(seed)``) when an event
starts using the ``random`` method, and ``order_seed_revealed`` (the commitment again and the
seed) when the operator reveals it after the line is over. The log stores the first of each
and serves ``/v1/log/{eventId}/order-seed``: the input of ``urr-verify audit --seed`` as it
stands. Like the pre-queue document, the log does not vouch for it: the verifier checks the
seed against the commitment published before.
"""

from __future__ import annotations

import re
from typing import Any

from urr_admission_log.store import Connection

COMMITTED = "order_seed_committed"
REVEALED = "order_seed_revealed"
KINDS = (COMMITTED, REVEALED)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SEED = re.compile(r"^(?:[0-9a-f]{2}){1,256}$")
_EVENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


def is_order_seed(record: Any) -> bool:
    return isinstance(record, dict) and record.get("type") in KINDS


def _valid(record: dict[str, Any]) -> bool:
    event_id, commitment = record.get("eventId"), record.get("commitment")
    if not (isinstance(event_id, str) and _EVENT.fullmatch(event_id)):
        return False
    if not (isinstance(commitment, str) and _HEX64.fullmatch(commitment)):
        return False
    if record.get("type") == REVEALED:
        seed = record.get("seed")
        return isinstance(seed, str) and _SEED.fullmatch(seed) is not None
    return True


async def store(conn: Connection, records: list[dict[str, Any]]) -> int:
    """Write what is new, record by record; how many records were malformed.

    A reveal arriving with no commitment stored (a lost record) creates the row from its own
    copy of the commitment; a second reveal, or one naming another commitment, changes
    nothing.
    """
    malformed = 0
    for record in records:
        if not _valid(record):
            malformed += 1
            continue
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO admission_order_seeds (event_id, commitment) VALUES ($1, $2)"
                " ON CONFLICT (event_id) DO NOTHING",
                record["eventId"],
                record["commitment"],
            )
            if record["type"] == REVEALED:
                await conn.execute(
                    "UPDATE admission_order_seeds SET seed = $2, revealed_at = now()"
                    " WHERE event_id = $1 AND seed IS NULL AND commitment = $3",
                    record["eventId"],
                    record["seed"],
                    record["commitment"],
                )
    return malformed


async def document(conn: Connection, event_id: str) -> dict[str, Any] | None:
    """The published document, or ``None`` when nothing was published for the event."""
    row = await conn.fetchrow(
        "SELECT commitment, committed_at, seed, revealed_at FROM admission_order_seeds"
        " WHERE event_id = $1",
        event_id,
    )
    if row is None:
        return None
    body: dict[str, Any] = {
        "eventId": event_id,
        "method": "random",
        "commitment": row["commitment"],
        "committedAt": row["committed_at"].isoformat(),
        "revealed": row["seed"] is not None,
    }
    if row["seed"] is not None:
        body["seed"] = row["seed"]
        body["revealedAt"] = row["revealed_at"].isoformat()
    return body
