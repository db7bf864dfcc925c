"""What the admission log publishes, and how a verifier reads it.

Leaves are JSON objects encoded canonically (keys sorted, no spaces, UTF-8) and hashed as RFC
9162 leaves. Two kinds:

- ``{"kind": "admit", "event", "ticket", "at", "who"}``: the event let in the holder of
  ``ticket`` (Tier-1 number, or pre-queue rank) at ``at`` (ms), with ``who`` the event-keyed
  hash of the holder's id;
- ``{"kind": "waive", "event", "ticket", "at", "reason"}``: the room stopped waiting for
  ``ticket`` (``reason``: ``abandoned`` or ``order_hold``), so later numbers went ahead of it;
- ``tier1-grant``, ``tier1-waive`` and ``tier1-pass``: the Tier-1 room's random draw
  (``urr_verify.tier1``), audited on their own; the admission audits here pass over them.

A leaf's index in the log is its sequence number: the log's order is the order of admission.

A signed tree head (STH) is an ES256 JWT (``kid`` in the log's JWKS) with claims ``iss``,
``sub`` (the event), ``size``, ``root`` (hex) and ``iat``. A receipt is
``{"eventId", "leafIndex", "leaf", "inclusionProof": [hex...], "sth"}``.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt

from urr_verify.merkle import ProofError, leaf_hash, verify_inclusion

STH_ALGORITHMS = ["ES256"]
#: Leaves of the Tier-1 random draw (``urr_verify.tier1``), not admissions to Tier 2.
TIER1_KINDS = ("tier1-grant", "tier1-waive", "tier1-pass")


class ReceiptError(ValueError):
    """A receipt or tree head does not verify; the message says why."""


def canonical(leaf: Mapping[str, Any]) -> bytes:
    return json.dumps(leaf, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def leaf_hash_of(leaf: Mapping[str, Any]) -> bytes:
    return leaf_hash(canonical(leaf))


@dataclass(frozen=True, slots=True)
class TreeHead:
    event_id: str
    size: int
    root: bytes
    issued_at: int


def read_tree_head(token: str, jwks: Mapping[str, Any], event_id: str) -> TreeHead:
    """Verify an STH's signature against the log's JWKS and read it."""
    try:
        kid = jwt.get_unverified_header(token).get("kid")
        keys = {key.get("kid"): key for key in jwks.get("keys", [])}
        if kid not in keys:
            raise ReceiptError(f"the tree head names key {kid!r}, which the JWKS does not hold")
        public = jwt.PyJWK(keys[kid]).key
        claims = jwt.decode(
            token,
            public,
            algorithms=STH_ALGORITHMS,
            options={"require": ["sub", "size", "root", "iat"], "verify_aud": False},
        )
    except jwt.PyJWTError as exc:
        raise ReceiptError(f"the tree head's signature does not verify: {exc}") from exc
    if claims["sub"] != event_id:
        raise ReceiptError(f"the tree head is for event {claims['sub']!r}, not {event_id!r}")
    size, root = claims["size"], claims["root"]
    if not isinstance(size, int) or size < 0:
        raise ReceiptError("the tree head's size is not a whole number")
    try:
        root_bytes = bytes.fromhex(root)
    except (TypeError, ValueError) as exc:
        raise ReceiptError("the tree head's root is not hex") from exc
    return TreeHead(event_id, size, root_bytes, int(claims["iat"]))


def verify_receipt(receipt: Mapping[str, Any], jwks: Mapping[str, Any]) -> TreeHead:
    """Raise ReceiptError unless the receipt's leaf is in the log under its signed head."""
    try:
        event_id = receipt["eventId"]
        index = receipt["leafIndex"]
        leaf = receipt["leaf"]
        proof = [bytes.fromhex(item) for item in receipt["inclusionProof"]]
        token = receipt["sth"]
    except (KeyError, TypeError, ValueError) as exc:
        raise ReceiptError(f"the receipt is malformed: {exc!r}") from exc
    if not isinstance(leaf, dict) or leaf.get("event") != event_id:
        raise ReceiptError("the receipt's leaf is not an entry of its event")
    if not isinstance(index, int):
        raise ReceiptError("the receipt's leaf index is not a whole number")
    head = read_tree_head(token, jwks, event_id)
    try:
        verify_inclusion(leaf_hash_of(leaf), index, head.size, proof, head.root)
    except ProofError as exc:
        raise ReceiptError(f"the leaf is not in the signed tree: {exc}") from exc
    return head


@dataclass(frozen=True, slots=True)
class OrderException:
    """An admission behind tickets owed later, with no waiver for it logged before."""

    #: The admission's leaf index.
    seq: int
    ticket: int
    #: How many tickets owed after this one were admitted before it.
    overtaken_by: int


@dataclass(slots=True)
class Audit:
    admitted: int = 0
    waived: int = 0
    explained: int = 0
    exceptions: list[OrderException] = field(default_factory=list)


def audit_order(entries: Iterable[Mapping[str, Any]], order: Sequence[int] | None = None) -> Audit:
    """Check that admissions follow the owed order, except where a logged waiver explains it.

    ``order``: the tickets in the order they were owed (a pre-queue's shuffled ranks first);
    tickets not in it, and every ticket when it is ``None``, are owed by ascending number. A
    number that never appears was never presented to Tier 2 (given up in Tier 1): that is no
    exception. An admission is an exception when a ticket owed after it was admitted first and
    no ``waive`` entry for it came before; with one, it is counted as explained.
    """
    rank = {ticket: position for position, ticket in enumerate(order or ())}
    base = len(rank)
    report = Audit()
    waived: set[int] = set()
    admitted_ranks: list[int] = []  # sorted
    for seq, entry in enumerate(entries):
        if entry["kind"] in TIER1_KINDS:
            continue
        ticket = int(entry["ticket"])
        if entry["kind"] == "waive":
            report.waived += 1
            waived.add(ticket)
            continue
        report.admitted += 1
        position = rank.get(ticket, base + ticket)
        ahead = len(admitted_ranks) - bisect.bisect_right(admitted_ranks, position)
        if ahead:
            if ticket in waived:
                report.explained += 1
            else:
                report.exceptions.append(OrderException(seq, ticket, ahead))
        bisect.insort(admitted_ranks, position)
    return report
