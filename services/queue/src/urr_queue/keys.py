"""Every Redis key the queue touches, in one place.

One event's keys share the hash tag ``{eventId}``, so they live in one Redis Cluster slot and
one Lua script may touch all of them. The scripts get them in a fixed order (``EventKeys``).
Revocations live in the user's slot (``{u:<id>}``), where the gateway looks them up.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

#: Every configured event (a Redis set, read by the admission loop instead of a key scan).
EVENTS_SET = "urr:queue:events"
#: Every event that may have an admission outbox (a Redis set, added at configuration and kept
#: after the event is deleted until its outbox is relayed: the relay reads it with EVENTS_SET).
OUTBOXES_SET = "urr:queue:outboxes"


@dataclass(frozen=True)
class EventKeys:
    """The keys of one event, in the order every script receives them as ``KEYS``."""

    config: str  # HASH: the event's settings
    queue: str  # ZSET: waiting users, score = queue number (arrival sequence or Tier-1 position)
    active: str  # ZSET: admitted users, score = session end (ms, Redis clock)
    tokens: str  # HASH: admitted user -> the entry token issued for this admission
    seq: str  # STRING: arrival sequence
    rids: str  # HASH: Tier-1 place -> the user it is bound to (the first who entered with it)
    marks: str  # ZSET: (queue number -> ms) once a second, to date the head of the queue
    stats: str  # HASH: measured rate and bookkeeping of the scripts
    admits: str  # HASH: second -> admissions in that second (last minute only)
    rate: str  # HASH: token bucket of the admission rate
    #: Prefix of the heartbeat bitmaps (``<prefix><bucket>``, bit = queue number).
    seen_prefix: str
    #: BITMAP: Tier-1 numbers that reached the queue (bit = number), so a tick can hold a free
    #: slot for a lower number still on its way. Last in ``KEYS``, after the older keys.
    arrived: str
    #: HASH: member -> the Tier-1 place (``<request id>#<position>``) its current stay came in
    #: with. Ending the stay spends the place.
    passes: str
    #: HASH: Tier-1 place -> ms it was spent (it never admits again).
    spent: str
    #: ZSET: spent places (score = ms) the Tier-1 table has not marked yet (the marker's outbox).
    unmarked: str
    #: HASH: member -> arrival number, for waiters of the random method (their score is an
    #: order key, their heartbeat bit still their arrival number).
    ordinals: str
    #: LIST: the pre-queue's roster, hashed ids in join order (frozen at sale start).
    roster: str
    #: HASH: hashed id -> member, for the roster's members (placed in line at the reveal).
    roster_members: str
    #: STRING: the published pre-queue document (JSON), written once at the reveal.
    prequeue_doc: str
    #: STREAM: the admission outbox (issue 19): the ``admitted`` and ``waived`` records the
    #: public admission log needs, written by the script that admits or waives; ``outbox.py``
    #: relays them to Kafka and deletes each entry once the broker has acknowledged it. Never
    #: deleted with the event while it holds entries.
    outbox: str
    #: STRING: which replica relays the outbox (a lease, ``outbox_lease.lua``; not in ``KEYS``).
    outbox_lease: str

    def as_list(self) -> list[str]:
        return [
            self.config,
            self.queue,
            self.active,
            self.tokens,
            self.seq,
            self.rids,
            self.marks,
            self.stats,
            self.admits,
            self.rate,
            self.arrived,
            self.passes,
            self.spent,
            self.unmarked,
            self.ordinals,
            self.roster,
            self.roster_members,
            self.prequeue_doc,
            self.outbox,
        ]


@lru_cache(maxsize=1024)
def event_keys(event_id: str) -> EventKeys:
    """An event's keys (frozen; made once per event while it is among the recent ones)."""
    tag = "{" + event_id + "}"
    return EventKeys(
        config=f"{tag}:config",
        queue=f"{tag}:queue",
        active=f"{tag}:active",
        tokens=f"{tag}:tokens",
        seq=f"{tag}:seq",
        rids=f"{tag}:rids",
        marks=f"{tag}:marks",
        stats=f"{tag}:stats",
        admits=f"{tag}:admits",
        rate=f"{tag}:rate",
        seen_prefix=f"{tag}:seen:",
        arrived=f"{tag}:arrived",
        passes=f"{tag}:passes",
        spent=f"{tag}:spent",
        unmarked=f"{tag}:unmarked",
        ordinals=f"{tag}:ordinals",
        roster=f"{tag}:roster",
        roster_members=f"{tag}:roster_members",
        prequeue_doc=f"{tag}:prequeue_doc",
        outbox=f"{tag}:outbox",
        outbox_lease=f"{tag}:outbox:lease",
    )


def revoked_key(user_id: str, jti: str) -> str:
    """The key the gateway checks for a revoked entry token (in the user's slot)."""
    return "{u:" + user_id + "}:revoked:" + jti


def reservation_done_key(reservation_id: str, status: str) -> str:
    """Remembers a processed reservation outcome, so a redelivered record changes nothing."""
    return "{r:" + reservation_id + "}:queue-done:" + status
