"""Signed tree heads: an ES256 JWT over (event, size, root, time), stored append-only.

No ``exp``: a tree head stays true forever (a later head must be consistent with it), so a
verifier must be able to check an old one years later.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

from urr_admission_log import store
from urr_common.tokens import ALGORITHM, SigningKey


@dataclass(frozen=True, slots=True)
class TreeHead:
    event_id: str
    size: int
    root: bytes
    sth: str


def sign_head(
    key: SigningKey, issuer: str, event_id: str, size: int, root: bytes, now: float
) -> str:
    claims = {"iss": issuer, "sub": event_id, "size": size, "root": root.hex(), "iat": int(now)}
    return jwt.encode(claims, key.private_key, algorithm=ALGORITHM, headers={"kid": key.kid})


async def latest(conn: store.Connection, event_id: str) -> TreeHead | None:
    row = await conn.fetchrow(
        "SELECT size, root, sth FROM admission_log_heads WHERE event_id = $1"
        " ORDER BY size DESC LIMIT 1",
        event_id,
    )
    if row is None:
        return None
    return TreeHead(event_id, int(row["size"]), bytes(row["root"]), str(row["sth"]))


async def is_signed(conn: store.Connection, event_id: str, size: int) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM admission_log_heads WHERE event_id = $1 AND size = $2", event_id, size
    )
    return found is not None


async def sign_grown(
    conn: store.Connection, key: SigningKey, issuer: str, now: float | None = None
) -> list[TreeHead]:
    """Sign a head for every event whose log grew since its latest head."""
    rows = await conn.fetch(
        "SELECT s.event_id, s.size FROM admission_log_sizes s"
        " WHERE s.size > COALESCE((SELECT max(h.size) FROM admission_log_heads h"
        " WHERE h.event_id = s.event_id), 0)"
    )
    signed = []
    for row in rows:
        event_id, size = str(row["event_id"]), int(row["size"])
        root = await store.root(conn, event_id, size)
        token = sign_head(
            key, issuer, event_id, size, root, now if now is not None else time.time()
        )
        inserted = await conn.execute(
            "INSERT INTO admission_log_heads (event_id, size, root, sth) VALUES ($1, $2, $3, $4)"
            " ON CONFLICT DO NOTHING",
            event_id,
            size,
            root,
            token,
        )
        if inserted.endswith(" 1"):
            signed.append(TreeHead(event_id, size, root, token))
    return signed
