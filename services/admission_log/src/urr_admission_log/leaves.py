"""Turning ``queue-events`` records into log leaves (pure; urr-verify documents the format).

Admissions are logged, and the waivers that explain an admission out of order: a ``waived``
record (the queue's order hold gave up on Tier-1 numbers that had not arrived) becomes one
``waive`` leaf per number, ahead of any late admission of it. The holder is named by an HMAC of
the user id keyed per event (``who``): a buyer recognises their own leaf from their receipt,
but nobody can test a list of e-mails or ids against the log without the server's secret.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Any

from urr_admission_log.store import Record
from urr_verify.log import canonical

_MAX_ID = 128
#: Order keys are 52-bit integers (13 hex digits of an HMAC-SHA1).
ORDER_KEY_LIMIT = 1 << 52


@dataclass(frozen=True, slots=True)
class Admission:
    record_id: str
    event_id: str
    leaf: dict[str, Any]

    def encoded(self) -> bytes:
        return canonical(self.leaf)

    def record(self) -> Record:
        """The leaf to append, with the ticket of an admission (its receipt's lookup key)."""
        ticket = self.leaf["ticket"] if self.leaf["kind"] == "admit" else None
        return Record(self.record_id, self.encoded(), ticket)


def holder_hash(secret: bytes, event_id: str, user_id: str) -> str:
    event_key = hmac.new(secret, event_id.encode(), hashlib.sha256).digest()
    return hmac.new(event_key, user_id.encode(), hashlib.sha256).hexdigest()


def _plain_id(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID and value.isprintable()


def admission_of(record: Any, secret: bytes) -> Admission | None:
    """The leaf for an ``admitted`` record; ``None`` for other types and malformed records."""
    if not isinstance(record, dict) or record.get("type") != "admitted":
        return None
    record_id, event_id, user_id = record.get("id"), record.get("eventId"), record.get("userId")
    ticket, at = record.get("queueNumber"), record.get("at")
    if not (_plain_id(record_id) and _plain_id(event_id) and _plain_id(user_id)):
        return None
    if not isinstance(ticket, int) or isinstance(ticket, bool) or ticket < 1:
        return None
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        return None
    # The random method's order key (urr_verify.random_order): in the leaf, so the order of
    # admission can be checked against it and each holder can check their own key.
    key = record.get("orderKey")
    if key is not None and (
        not isinstance(key, int) or isinstance(key, bool) or not 0 <= key < ORDER_KEY_LIMIT
    ):
        return None
    event, holder = str(event_id), str(user_id)
    leaf: dict[str, Any] = {
        "kind": "admit",
        "event": event,
        "ticket": ticket,
        "at": at,
        "who": holder_hash(secret, event, holder),
    }
    if key is not None:
        leaf["key"] = key
    return Admission(str(record_id), event, leaf)


#: Numbers one ``waived`` record may carry (the queue sends at most 10,000).
_MAX_WAIVED = 20_000


def waivers_of(record: Any) -> list[Admission] | None:
    """One ``waive`` leaf per number of a ``waived`` record; ``None`` for other types and
    malformed records. Each leaf's record id is the record's id and the number, so a
    redelivered record adds nothing."""
    if not isinstance(record, dict) or record.get("type") != "waived":
        return None
    record_id, event_id, at = record.get("id"), record.get("eventId"), record.get("at")
    numbers, reason = record.get("queueNumbers"), record.get("reason")
    if not (_plain_id(record_id) and _plain_id(event_id)) or reason != "order_hold":
        return None
    if not isinstance(at, int) or isinstance(at, bool) or at < 0:
        return None
    if not isinstance(numbers, list) or not 0 < len(numbers) <= _MAX_WAIVED:
        return None
    if any(not isinstance(n, int) or isinstance(n, bool) or n < 1 for n in numbers):
        return None
    event = str(event_id)
    return [
        Admission(
            f"{record_id}:{number}",
            event,
            {"kind": "waive", "event": event, "ticket": number, "at": at, "reason": reason},
        )
        for number in numbers
    ]


# -- Tier 1's random draw (urr_vwr_lambda.grant_log) -----------------------------------------

TIER1_TYPES = ("tier1_granted", "tier1_waived", "tier1_passed")
_HEX64_DIGITS = frozenset("0123456789abcdef")
#: Tier-1 numbers, sequences and epoch-ms times fit in a signed 64-bit integer.
_MAX_NUMBER = (1 << 63) - 1


def _number(value: Any, low: int = 0) -> int | None:
    """``value`` when it is a whole number in ``[low, 2^63)``, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= _MAX_NUMBER:
        return value
    return None


def _alias(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64_DIGITS


def tier1_leaf_of(record: Any) -> Admission | None:
    """The ``tier1-grant`` or ``tier1-waive`` leaf of a Tier-1 draw record; ``None`` for other
    types and for malformed records (every field checked: a leaf is forever)."""
    if not isinstance(record, dict) or record.get("type") not in TIER1_TYPES:
        return None
    record_id, event_id, arrival = record.get("id"), record.get("eventId"), record.get("arrival")
    if not (_plain_id(record_id) and _plain_id(event_id) and _alias(arrival)):
        return None
    epoch, place, at = (
        _number(record.get("epoch")),
        _number(record.get("place"), 1),
        _number(record.get("at")),
    )
    key = _number(record.get("orderKey"))
    if epoch is None or place is None or at is None or key is None or key >= ORDER_KEY_LIMIT:
        return None
    event = str(event_id)
    leaf: dict[str, Any] = {
        "event": event,
        "epoch": epoch,
        "place": place,
        "arrival": arrival,
        "key": key,
        "at": at,
    }
    kind = record["type"]
    if kind == "tier1_granted":
        details = _grant_fields(record, place)
    elif kind == "tier1_passed":
        details = _pass_fields(record, place)
    else:
        details = _waiver_fields(record)
    if details is None:
        return None
    return Admission(str(record_id), event, leaf | details)


def _draw_fields(record: dict[str, Any], place: int) -> dict[str, Any] | None:
    """``draw``, ``floor``, ``top`` and ``cutoff`` of the draw a record belongs to, the place
    inside its range."""
    draw = _number(record.get("draw"), 1)
    floor, top, cutoff = (_number(record.get(name)) for name in ("floor", "top", "cutoff"))
    if draw is None or floor is None or top is None or cutoff is None:
        return None
    if not floor < place <= top:
        return None  # a place outside the numbers its draw read is no part of it
    return {"draw": draw, "floor": floor, "top": top, "cutoff": cutoff}


def _grant_fields(record: dict[str, Any], place: int) -> dict[str, Any] | None:
    seq, draw = _number(record.get("seq"), 1), _draw_fields(record, place)
    if seq is None or draw is None:
        return None
    return {"kind": "tier1-grant", "seq": seq} | draw


def _pass_fields(record: dict[str, Any], place: int) -> dict[str, Any] | None:
    last_seen, draw = _number(record.get("lastSeen")), _draw_fields(record, place)
    if last_seen is None or draw is None:
        return None
    return {"kind": "tier1-pass", "lastSeen": last_seen} | draw


def _waiver_fields(record: dict[str, Any]) -> dict[str, Any] | None:
    reason = record.get("reason")
    if reason == "abandoned":
        last_seen = _number(record.get("lastSeen"))
        return None if last_seen is None else {"lastSeen": last_seen} | _waive(reason)
    if reason == "grant_lost":
        seq = _number(record.get("seq"), 1)
        return None if seq is None else {"seq": seq} | _waive(reason)
    return None


def _waive(reason: str) -> dict[str, Any]:
    return {"kind": "tier1-waive", "reason": reason}
