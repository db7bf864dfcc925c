"""The queueing method ``random``: check the revealed seed and the order of admission.

While people queue, the event's seed is secret and only ``commitment = SHA-256(seed)`` is
public (``/v1/log/{eventId}/order-seed``, from the moment the event uses the method). Each
arrival's order key is ``HMAC-SHA1(seed, arrival id)``, its first 13 hex digits read as an
integer (smaller goes first); Tier 2 draws it at entry and its admission leaf carries it as
``key``. Once nobody can arrive any more (the event is closed and its line is empty) the
operator reveals the seed, and then:

- anyone checks ``SHA-256(seed) == commitment`` (the seed was fixed before anyone queued);
- anyone checks the log admitted by key: an admission is an exception when an earlier
  admission had a larger key while this one was provably already waiting, i.e. an admission
  at or before that earlier one holds a higher arrival number (``ticket``: numbers are taken
  in arrival order, so its holder arrived after this one and was admitted before it). A
  ``waive`` leaf for the number logged before the admission explains it, as in the fifo audit;
- each buyer checks their own leaf's key against the seed and their arrival id
  (``urr-verify receipt ... --seed DOC --arrival-id ID``): the operator cannot hand out keys
  other than those the committed seed gives without the holders seeing it.

Written from this description, apart from the services' ``urr_common.fairness``.
"""

from __future__ import annotations

import bisect
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Any

from urr_verify.log import TIER1_KINDS, Audit, OrderException

KEY_HEX_DIGITS = 13
KEY_LIMIT = 1 << (4 * KEY_HEX_DIGITS)


class SeedError(ValueError):
    """The revealed seed does not check out; the message says why."""


def order_key(seed: bytes, arrival_id: str) -> int:
    digest = hmac.new(seed, arrival_id.encode("utf-8"), hashlib.sha1).hexdigest()
    return int(digest[:KEY_HEX_DIGITS], 16)


def revealed_seed(document: Mapping[str, Any]) -> bytes:
    """The seed of an ``order-seed`` document, once it is shown to match the commitment."""
    commitment, seed = document.get("commitment"), document.get("seed")
    if not isinstance(commitment, str) or len(commitment) != 64:
        raise SeedError("the document holds no commitment (64 hex digits)")
    if seed is None or not document.get("revealed", True):
        raise SeedError("the seed has not been revealed yet (it is, once the line is over)")
    try:
        seed_bytes = bytes.fromhex(seed)
        committed = bytes.fromhex(commitment)
    except (TypeError, ValueError) as exc:
        raise SeedError("the seed or the commitment is not hex") from exc
    if hashlib.sha256(seed_bytes).digest() != committed:
        raise SeedError("the revealed seed does not hash to the commitment published before")
    return seed_bytes


def check_own_key(leaf: Mapping[str, Any], seed: bytes, arrival_id: str) -> int:
    """The key a buyer's leaf carries is the one the seed gives their arrival id."""
    key = leaf.get("key")
    if not isinstance(key, int):
        raise SeedError("the leaf carries no order key (not an admission of the random method)")
    expected = order_key(seed, arrival_id)
    if key != expected:
        raise SeedError(
            f"the leaf's order key {key} is not the one the seed gives this arrival id ({expected})"
        )
    return key


def audit_random(entries: Sequence[Mapping[str, Any]]) -> Audit:
    """Check that admissions went by order key among those waiting (see the module doc)."""
    report = Audit()
    waived: set[int] = set()
    # Admissions in log order: (sequence, ticket, key).
    admissions: list[tuple[int, int, int]] = []
    waived_before: list[bool] = []
    for seq, entry in enumerate(entries):
        if entry["kind"] in TIER1_KINDS:
            continue
        ticket = int(entry["ticket"])
        if entry["kind"] == "waive":
            report.waived += 1
            waived.add(ticket)
            continue
        key = entry.get("key")
        if not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < KEY_LIMIT:
            raise SeedError(f"admission {seq} (ticket {ticket}) carries no order key")
        report.admitted += 1
        admissions.append((seq, ticket, key))
        waived_before.append(ticket in waived)
    overtaken = _overtaken([(ticket, key) for _, ticket, key in admissions])
    for i, (seq, ticket, _) in enumerate(admissions):
        if not overtaken[i]:
            continue
        if waived_before[i]:
            report.explained += 1
        else:
            report.exceptions.append(OrderException(seq, ticket, overtaken[i]))
    return report


def _overtaken(admissions: Sequence[tuple[int, int]]) -> list[int]:
    """For each admission ``(ticket, key)`` in log order: how many earlier admissions had a
    larger key while it provably waited.

    Admission ``i`` provably waited from ``first(i)`` on, the first admission whose prefix
    holds a ticket above ``ticket_i``. The count is of ``j`` in ``[first(i), i)`` with
    ``key_j > key_i``: two prefix counts, answered in one pass (O(n log n)).
    """
    highest: list[int] = []  # highest ticket among admissions 0..i (non-decreasing)
    for ticket, _ in admissions:
        highest.append(max(ticket, highest[-1] if highest else ticket))
    queries: dict[int, list[tuple[int, int, int]]] = {}
    for i, (ticket, key) in enumerate(admissions):
        first = bisect.bisect_right(highest, ticket)
        if first < i:
            queries.setdefault(i, []).append((i, key, +1))
            queries.setdefault(first, []).append((i, key, -1))
    overtaken = [0] * len(admissions)
    # A Fenwick tree over the keys' ranks: counts of keys inserted so far, O(log n) a step.
    rank = {key: i + 1 for i, key in enumerate(sorted({key for _, key in admissions}))}
    tree = [0] * (len(rank) + 1)
    inserted = 0
    for position in range(len(admissions) + 1):
        for owner, key, sign in queries.get(position, ()):
            at_most, i = 0, rank[key]
            while i > 0:
                at_most += tree[i]
                i -= i & -i
            overtaken[owner] += sign * (inserted - at_most)
        if position < len(admissions):
            i = rank[admissions[position][1]]
            while i < len(tree):
                tree[i] += 1
                i += i & -i
            inserted += 1
    return overtaken
