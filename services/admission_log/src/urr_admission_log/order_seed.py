"""The random method's seed from ``queue-events`` (issue 19), stored once, served as one document.

The queue publishes ``order_seed_committed`` (the commitment ``SHA-256(seed)``) when an event
starts using the ``random`` method, and ``order_seed_revealed`` (the commitment again and the
seed) when the operator reveals it after the line is over. The log stores the first of each
and serves ``/v1/log/{eventId}/order-seed``: the input of ``urr-verify audit --seed`` as it
stands. Like the pre-queue document, the log does not vouch for it: the verifier checks the
seed against the commitment published before.

Tier 1 draws its own random order from a seed it keeps itself, and publishes
``tier1_order_seed_committed`` / ``tier1_order_seed_revealed`` the same way (kept in
``admission_tier1_order_seeds``). The document carries them as its ``tier1`` part (the same
fields: ``commitment``, ``committedAt``, ``revealed``, and ``seed``/``revealedAt`` once
revealed); a document with only a Tier-1 part has no top-level commitment.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from urr_admission_log.store import Connection

COMMITTED = "order_seed_committed"
REVEALED = "order_seed_revealed"
TIER1_COMMITTED = "tier1_order_seed_committed"
TIER1_REVEALED = "tier1_order_seed_revealed"
KINDS = (COMMITTED, REVEALED, TIER1_COMMITTED, TIER1_REVEALED)


@dataclass(frozen=True)
class _Sql:
    """One tier's statements, written out in full (no table name is ever interpolated)."""

    commit: str
    reveal: str
    read: str


_QUEUE = _Sql(
    "INSERT INTO admission_order_seeds (event_id, commitment) VALUES ($1, $2)"
    " ON CONFLICT (event_id) DO NOTHING",
    "UPDATE admission_order_seeds SET seed = $2, revealed_at = now()"
    " WHERE event_id = $1 AND seed IS NULL AND commitment = $3",
    "SELECT commitment, committed_at, seed, revealed_at FROM admission_order_seeds"
    " WHERE event_id = $1",
)
_TIER1 = _Sql(
    "INSERT INTO admission_tier1_order_seeds (event_id, commitment) VALUES ($1, $2)"
    " ON CONFLICT (event_id) DO NOTHING",
    "UPDATE admission_tier1_order_seeds SET seed = $2, revealed_at = now()"
    " WHERE event_id = $1 AND seed IS NULL AND commitment = $3",
    "SELECT commitment, committed_at, seed, revealed_at FROM admission_tier1_order_seeds"
    " WHERE event_id = $1",
)
_SQL = {COMMITTED: _QUEUE, REVEALED: _QUEUE, TIER1_COMMITTED: _TIER1, TIER1_REVEALED: _TIER1}

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
    if record.get("type") in (REVEALED, TIER1_REVEALED):
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
        sql = _SQL[record["type"]]
        async with conn.transaction():
            await conn.execute(
                sql.commit,
                record["eventId"],
                record["commitment"],
            )
            if record["type"] in (REVEALED, TIER1_REVEALED):
                await conn.execute(
                    sql.reveal,
                    record["eventId"],
                    record["seed"],
                    record["commitment"],
                )
    return malformed


async def _part(conn: Connection, sql: _Sql, event_id: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(sql.read, event_id)
    if row is None:
        return None
    body: dict[str, Any] = {
        "method": "random",
        "commitment": row["commitment"],
        "committedAt": row["committed_at"].isoformat(),
        "revealed": row["seed"] is not None,
    }
    if row["seed"] is not None:
        body["seed"] = row["seed"]
        body["revealedAt"] = row["revealed_at"].isoformat()
    return body


async def document(conn: Connection, event_id: str) -> dict[str, Any] | None:
    """The published document, or ``None`` when nothing was published for the event.

    ``revealed`` at the top is true once every part present is revealed (the document is
    final then, and served immutable).
    """
    queue = await _part(conn, _QUEUE, event_id)
    tier1 = await _part(conn, _TIER1, event_id)
    if queue is None and tier1 is None:
        return None
    body: dict[str, Any] = {"eventId": event_id, **(queue or {})}
    if tier1 is not None:
        body["tier1"] = tier1
    body["revealed"] = all(part["revealed"] for part in (queue, tier1) if part is not None)
    return body
