"""The scheduled pre-queue's reveal and what it publishes (issue 19).

Before the pre-queue opens the operator sets ``prequeue_start``, ``sale_start`` and
``prequeue_commitment = SHA-256(secret)`` (set once; published to the admission log at once).
Whoever enters between the two times joins the roster: their salted hashed id, in join order
(``visit.lua``). From ``sale_start`` (Redis's clock) nobody joins the roster and nobody is
admitted until the operator reveals the secret: the service checks it against the
commitment, computes the roster's Merkle root and the shuffle of ``urr_common.fairness`` (the
procedure ``urr-verify shuffle`` checks), places the roster in line in that order (ranks
1..n, ahead of everyone who came after ``sale_start``) and publishes the roster, root and
secret through ``queue-events`` to the admission log (``/v1/log/{eventId}/prequeue``).
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from urr_common.fairness import prequeue_order
from urr_common.problems import Conflict, Unprocessable
from urr_queue.config import EventConfig
from urr_queue.store import QueueStore

#: Roster members per published record (about 42 kB of JSON).
ROSTER_CHUNK = 1000
COMMITTED = "prequeue_committed"
ROSTER = "prequeue_roster"
REVEALED = "prequeue_revealed"


def _iso(config: EventConfig, name: str) -> str:
    moment = getattr(config, name)
    return "" if moment is None else moment.isoformat()


def committed_record(event_id: str, config: EventConfig) -> dict[str, Any]:
    return {
        # Fixed ids: a republished record is appended once (the log keeps the first).
        "id": f"{COMMITTED}:{event_id}",
        "type": COMMITTED,
        "eventId": event_id,
        "commitment": config.prequeue_commitment,
        "prequeueStart": _iso(config, "prequeue_start"),
        "saleStart": _iso(config, "sale_start"),
    }


async def reveal(store: QueueStore, event_id: str, config: EventConfig, secret: bytes) -> bytes:
    """Freeze, check, shuffle and place the roster; the published document (JSON bytes).

    Calling it again returns the document of the first reveal (and finishes placing the
    roster if the first call stopped half-way); a wrong secret or a sale not started yet
    changes nothing.
    """
    if not config.has_prequeue or config.sale_start is None:
        raise Conflict("this event has no pre-queue", code="no_prequeue")
    if hashlib.sha256(secret).hexdigest() != config.prequeue_commitment:
        raise Unprocessable(
            "the secret does not hash to the published commitment", code="secret_mismatch"
        )
    document = await store.prequeue_document(event_id)
    if document is None:
        sale_start_ms = round(config.sale_start.timestamp() * 1000)
        if await store.redis_now_ms() < sale_start_ms:
            raise Conflict(
                "the roster is frozen at sale start; reveal the secret after it",
                code="sale_not_started",
                sale_start=config.sale_start.isoformat(),
            )
        members = await store.roster(event_id)
        root, order = prequeue_order([bytes.fromhex(m) for m in members], secret)
        body = {
            "eventId": event_id,
            "prequeueStart": _iso(config, "prequeue_start"),
            "saleStart": _iso(config, "sale_start"),
            "commitment": config.prequeue_commitment,
            "secret": secret.hex(),
            "root": root.hex(),
            "size": len(members),
            "members": members,
            "order": [member.hex() for member in order],
        }
        document = await store.keep_prequeue_document(event_id, orjson.dumps(body))
    await store.place_roster(event_id, _load(document)["order"])
    return document


def _load(document: bytes) -> dict[str, Any]:
    loaded: dict[str, Any] = orjson.loads(document)
    return loaded


def published_records(event_id: str, document: bytes) -> list[dict[str, Any]]:
    """The roster in chunks, then the reveal (root, secret, size): what the log stores."""
    body = _load(document)
    members: list[str] = body["members"]
    records: list[dict[str, Any]] = [
        {
            "id": f"{ROSTER}:{event_id}:{start}",
            "type": ROSTER,
            "eventId": event_id,
            "start": start,
            "members": members[start : start + ROSTER_CHUNK],
        }
        for start in range(0, len(members), ROSTER_CHUNK)
    ]
    records.append(
        {
            "id": f"{REVEALED}:{event_id}",
            "type": REVEALED,
            "eventId": event_id,
            "commitment": body["commitment"],
            "prequeueStart": body["prequeueStart"],
            "saleStart": body["saleStart"],
            "secret": body["secret"],
            "root": body["root"],
            "size": body["size"],
        }
    )
    return records
