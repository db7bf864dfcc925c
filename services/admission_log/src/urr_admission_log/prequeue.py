"""Pre-queue publications from ``queue-events`` (issue 19), stored once, served as one document.

The queue publishes three kinds of record for an event with a pre-queue: ``prequeue_committed``
(the commitment and times, before the pre-queue opens), ``prequeue_roster`` (the frozen
roster in chunks: ``start`` and hashed ``members`` in join order) and ``prequeue_revealed``
(size, Merkle root and the secret). Each is written once; what the log serves is whatever it
holds, and the document is complete only when every member up to ``size`` has arrived. It is
the input of ``urr-verify shuffle`` as it stands (``members``, ``root``, ``commitment``,
``secret``): the log does not vouch for it, the verifier checks it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from urr_admission_log.store import Connection

COMMITTED = "prequeue_committed"
ROSTER = "prequeue_roster"
REVEALED = "prequeue_revealed"
KINDS = (COMMITTED, ROSTER, REVEALED)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_HEX = re.compile(r"^(?:[0-9a-f]{2}){1,64}$")
_EVENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAX_TIME = 64
_MAX_CHUNK = 10_000
_MAX_SIZE = 100_000_000


def _time(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_TIME and value.isprintable()


def _count(value: Any, limit: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= limit


@dataclass
class EventPublications:
    """What a batch holds for one event, in record order."""

    committed: dict[str, Any] | None = None
    chunks: list[tuple[int, list[str]]] = field(default_factory=list)
    revealed: dict[str, Any] | None = None


def is_prequeue(record: Any) -> bool:
    return isinstance(record, dict) and record.get("type") in KINDS


def _valid(record: dict[str, Any]) -> bool:
    kind = record.get("type")
    if kind == ROSTER:
        members = record.get("members")
        return (
            _count(record.get("start"), _MAX_SIZE)
            and isinstance(members, list)
            and 0 < len(members) <= _MAX_CHUNK
            and all(isinstance(m, str) and _HEX.fullmatch(m) for m in members)
        )
    committed = (
        isinstance(record.get("commitment"), str)
        and _HEX64.fullmatch(record["commitment"]) is not None
        and _time(record.get("prequeueStart"))
        and _time(record.get("saleStart"))
    )
    if kind == COMMITTED:
        return committed
    return (
        committed
        and _count(record.get("size"), _MAX_SIZE)
        and isinstance(record.get("root"), str)
        and _HEX64.fullmatch(record["root"]) is not None
        and isinstance(record.get("secret"), str)
        and 0 < len(record["secret"]) <= 2048
        and re.fullmatch(r"(?:[0-9a-f]{2})+", record["secret"]) is not None
    )


def group(records: list[dict[str, Any]]) -> tuple[dict[str, EventPublications], int]:
    """Valid pre-queue records by event, and how many were malformed."""
    grouped: dict[str, EventPublications] = {}
    malformed = 0
    for record in records:
        event_id = record.get("eventId")
        if not isinstance(event_id, str) or not _EVENT.fullmatch(event_id) or not _valid(record):
            malformed += 1
            continue
        found = grouped.setdefault(event_id, EventPublications())
        if record["type"] == ROSTER:
            found.chunks.append((record["start"], record["members"]))
        elif record["type"] == COMMITTED:
            found.committed = found.committed or record
        else:
            found.revealed = found.revealed or record
    return grouped, malformed


async def _ensure_row(conn: Connection, event_id: str, source: dict[str, Any]) -> None:
    await conn.execute(
        "INSERT INTO admission_prequeues (event_id, commitment, prequeue_start, sale_start)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT (event_id) DO NOTHING",
        event_id,
        source["commitment"],
        source["prequeueStart"],
        source["saleStart"],
    )


async def store(conn: Connection, event_id: str, found: EventPublications) -> None:
    """Write what is new for one event, in one transaction; what is stored stays as it is.

    A roster chunk or a reveal arriving before any commitment (a lost record) creates the
    row from the reveal's copy of the commitment; chunks with no row yet wait for a
    republished batch (the queue republishes the whole set on a repeated reveal).
    """
    async with conn.transaction():
        for source in (found.committed, found.revealed):
            if source is not None:
                await _ensure_row(conn, event_id, source)
        exists = await conn.fetchval(
            "SELECT 1 FROM admission_prequeues WHERE event_id = $1", event_id
        )
        if not exists:
            return
        for start, members in found.chunks:
            await conn.execute(
                "INSERT INTO admission_prequeue_members (event_id, idx, member)"
                " SELECT $1, * FROM unnest($2::bigint[], $3::text[]) ON CONFLICT DO NOTHING",
                event_id,
                list(range(start, start + len(members))),
                members,
            )
        revealed = found.revealed
        if revealed is not None:
            await conn.execute(
                "UPDATE admission_prequeues SET size = $2, root = $3, secret = $4,"
                " revealed_at = now() WHERE event_id = $1 AND root IS NULL"
                " AND commitment = $5",
                event_id,
                revealed["size"],
                revealed["root"],
                revealed["secret"],
                revealed["commitment"],
            )


async def document(conn: Connection, event_id: str) -> tuple[dict[str, Any], bool] | None:
    """The published document and whether it is complete (revealed, every member in)."""
    row = await conn.fetchrow(
        "SELECT commitment, prequeue_start, sale_start, size, root, secret"
        " FROM admission_prequeues WHERE event_id = $1",
        event_id,
    )
    if row is None:
        return None
    body: dict[str, Any] = {
        "eventId": event_id,
        "commitment": row["commitment"],
        "prequeueStart": row["prequeue_start"],
        "saleStart": row["sale_start"],
        "revealed": row["root"] is not None,
    }
    if row["root"] is None:
        return body, False
    members = [
        r["member"]
        for r in await conn.fetch(
            "SELECT member FROM admission_prequeue_members WHERE event_id = $1 AND idx < $2"
            " ORDER BY idx",
            event_id,
            row["size"],
        )
    ]
    complete = len(members) == row["size"]
    body.update(
        size=row["size"],
        root=row["root"],
        secret=row["secret"],
        membersPublished=len(members),
    )
    if complete:
        body["members"] = members
    return body, complete
