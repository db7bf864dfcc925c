"""OpenAPI document of the Tier-2 queue's public API (``urr_queue.handlers``)."""

from __future__ import annotations

from urr_queue.apidocs.common import (
    EVENT_PARAM,
    LOGGED_IN,
    RETRY_AFTER,
    SECURITY_SCHEMES,
    Json,
    document,
    json_body,
    problem,
    rate_limited,
    ref,
    unavailable,
)
from urr_queue.estimates import MAX_POLL_S, MIN_POLL_S

DESCRIPTION = f"""\
The service queue in front of the seat and booking APIs. A logged-in client enters an event's
queue, polls its status until it is admitted, and then holds an **entry token** that the seat
and reservation APIs require (`x-queue-entry-token` header, or the `urr-entry-token` cookie a
browser receives).

## Polling advice for native clients

* Poll `GET /api/v1/queue/{{eventId}}/status` again after **`poll_after_seconds`** (always
  between {MIN_POLL_S} and {MAX_POLL_S} s). Polling faster gains nothing: the order is fixed at
  entry and the gateway's QUEUE limit (60 requests a minute per user) answers `429`.
* A waiter that stops polling loses the place when it reaches the front (the event's idle
  timeout is at least three advised intervals): keep polling while the app is in the
  foreground, and enter again (the same place is kept while it lasts) when it comes back.
* On `429` or `503`, wait the `Retry-After` seconds before the next call; never retry in a
  tight loop.
* Once `status` is `admitted`, stop polling the queue; `expires_in_seconds` says how long the
  entry token lasts (polling does not renew it). `POST leave` gives the place or session back.
* An event with a **pre-queue**: whoever enters between its start and the sale start gets
  `status: prequeue` (keep polling); at the sale start the roster is shuffled by a secret
  committed to beforehand, and everyone on it is placed ahead of later arrivals. The roster,
  its root and the secret are published at `/v1/log/{{eventId}}/prequeue` (`urr-verify
  shuffle` recomputes the order); `member_id` is this user's entry in it.
* For an event behind a Tier-1 waiting room, send the Tier-1 pass (`urr-vwr-token` cookie, or
  the `X-Vwr-Token` header) with `enter`; the place follows the number signed into it.
"""

WAITING: Json = {
    "type": "object",
    "required": [
        "status",
        "event_id",
        "position",
        "ahead",
        "queue_size",
        "eta_seconds",
        "poll_after_seconds",
        "mode",
    ],
    "properties": {
        "status": {"const": "waiting"},
        "event_id": {"type": "string"},
        "position": {"type": "integer", "minimum": 1, "description": "1-based place in line."},
        "ahead": {"type": "integer", "minimum": 0},
        "queue_size": {"type": "integer", "minimum": 0},
        "eta_seconds": {
            "type": ["integer", "null"],
            "description": "Estimate; null while the event admits nobody (paused).",
        },
        "poll_after_seconds": {
            "type": "integer",
            "minimum": MIN_POLL_S,
            "maximum": MAX_POLL_S,
            "description": "When to poll next.",
        },
        "mode": {"enum": ["queue", "passthrough", "paused", "closed"]},
        "queue_method": {
            "enum": ["fifo", "random", "passthrough", "reject"],
            "description": "How the line is ordered: by arrival, by a draw from the event's "
            "seed made at entry, everyone straight in, or nobody waits (`409 event_closed`).",
        },
        "queue_number": {
            "type": ["integer", "null"],
            "description": "The number the admission log names this stay's admission by: "
            "once admitted, `/v1/log/{eventId}/receipt?ticket=` this gives the receipt.",
        },
    },
}
ADMITTED: Json = {
    "type": "object",
    "required": [
        "status",
        "event_id",
        "entry_token",
        "expires_at",
        "expires_in_seconds",
        "queue_size",
        "poll_after_seconds",
    ],
    "properties": {
        "status": {"const": "admitted"},
        "event_id": {"type": "string"},
        "entry_token": {
            "type": "string",
            "description": "ES256 JWT; send as `x-queue-entry-token` to the seat and "
            "reservation APIs (also set as the HttpOnly `urr-entry-token` cookie).",
        },
        "expires_at": {"type": "integer", "description": "Unix seconds."},
        "expires_in_seconds": {"type": "integer", "minimum": 1},
        "queue_size": {"type": "integer", "minimum": 0},
        "poll_after_seconds": {"type": "integer", "minimum": 1},
        "queue_number": {
            "type": "integer",
            "description": "Only when this very call let the user straight in (passthrough): "
            "the number its admission is logged under (`/v1/log/{eventId}/receipt?ticket=`). "
            "A waiter learnt it from the waiting answers.",
        },
    },
}
PREQUEUE: Json = {
    "type": "object",
    "required": [
        "status",
        "event_id",
        "member_id",
        "roster_size",
        "prequeue_commitment",
        "sale_start",
        "poll_after_seconds",
    ],
    "properties": {
        "status": {"const": "prequeue"},
        "event_id": {"type": "string"},
        "member_id": {
            "type": "string",
            "pattern": "^[0-9a-f]+$",
            "description": "This user's salted hashed id in the roster: the admission log "
            "publishes the roster (`/v1/log/{eventId}/prequeue`), where it proves the entry.",
        },
        "roster_size": {"type": "integer", "minimum": 1},
        "prequeue_commitment": {
            "type": "string",
            "pattern": "^[0-9a-f]{64}$",
            "description": "SHA-256 of the secret that shuffles the roster, fixed before the "
            "pre-queue opened; the secret published at sale start must hash to it.",
        },
        "sale_start": {"type": "string", "format": "date-time"},
        "poll_after_seconds": {"type": "integer", "minimum": MIN_POLL_S, "maximum": MAX_POLL_S},
    },
}
PLACE = {"oneOf": [ref("Waiting"), ref("Admitted"), ref("Prequeue")]}

COMMON_ERRORS: Json = {
    "400": problem("The event id is malformed.", "invalid_event_id", "invalid_user_id"),
    "401": problem("Log in first (missing or refused access token).", "login_required"),
    "429": rate_limited("QUEUE"),
    "503": unavailable("queue_unavailable"),
}

PATHS: Json = {
    "/api/v1/queue/{eventId}/enter": {
        "parameters": [EVENT_PARAM],
        "post": {
            "operationId": "enterQueue",
            "summary": "Take a place (entering twice keeps the first place).",
            "security": LOGGED_IN,
            "parameters": [
                {
                    "name": "X-Vwr-Token",
                    "in": "header",
                    "required": False,
                    "description": "The Tier-1 pass, for events behind a waiting room.",
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "201": json_body(PLACE, "A new place (or admitted at once in passthrough)."),
                "200": json_body(PLACE, "The place this user already had."),
                **COMMON_ERRORS,
                "403": problem(
                    "Entry refused.",
                    "queue_closed",
                    "vwr_token_required",
                    "tier1_pass_spent",
                    "tier1_pass_bound",
                    "tier1_pass_stale",
                    "tier1_pass_mismatch",
                    "prequeue_closed",
                ),
                "404": problem("No queue for this event.", "event_not_found"),
                "409": problem(
                    "The event takes nobody (sold out or closed), or its pre-queue has not "
                    "opened yet.",
                    "event_closed",
                    "prequeue_not_open",
                ),
            },
        },
    },
    "/api/v1/queue/{eventId}/status": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "queueStatus",
            "summary": "Where this user stands; poll after `poll_after_seconds`.",
            "security": LOGGED_IN,
            "responses": {
                "200": json_body(PLACE, "Still waiting, or admitted with the entry token."),
                **COMMON_ERRORS,
                "404": problem(
                    "No place (never entered, left, or dropped after it stopped polling): "
                    "enter again.",
                    "not_in_queue",
                    "event_not_found",
                ),
                "409": problem(
                    "The event takes nobody any more (sold out or closed): the place is gone.",
                    "event_closed",
                ),
            },
        },
    },
    "/api/v1/queue/{eventId}/leave": {
        "parameters": [EVENT_PARAM],
        "post": {
            "operationId": "leaveQueue",
            "summary": "Give the place or the admitted session back.",
            "security": LOGGED_IN,
            "responses": {
                "200": json_body(ref("Left"), "What was ended."),
                **COMMON_ERRORS,
                "404": problem("No queue for this event.", "event_not_found"),
            },
        },
    },
    "/api/v1/queue/{eventId}/capacity": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "queueCapacity",
            "summary": "What the queue can absorb now (read by the Tier-1 counter advancer).",
            "responses": {
                "200": json_body(ref("Capacity"), "Live figures of the event."),
                "400": COMMON_ERRORS["400"],
                "404": problem("No queue for this event.", "event_not_found"),
                "503": COMMON_ERRORS["503"],
            },
        },
    },
}

SCHEMAS: Json = {
    "Waiting": WAITING,
    "Admitted": ADMITTED,
    "Prequeue": PREQUEUE,
    "Left": {
        "type": "object",
        "required": ["status", "event_id", "was"],
        "properties": {
            "status": {"const": "left"},
            "event_id": {"type": "string"},
            "was": {"enum": ["waiting", "admitted", "none"]},
        },
    },
    "Capacity": {
        "type": "object",
        "required": ["waiting", "admitted", "capacity", "admit_per_second"],
        "properties": {
            "waiting": {"type": "integer", "minimum": 0},
            "admitted": {"type": "integer", "minimum": 0},
            "capacity": {"type": "integer", "minimum": 1},
            "admit_per_second": {
                "type": "number",
                "minimum": 0,
                "description": "0 while the event is paused or closed.",
            },
        },
    },
}


def build() -> Json:
    doc = document(
        title="URR Tier 2: service queue",
        description=DESCRIPTION,
        servers=[{"url": "/", "description": "The site's gateway (same origin as the pages)."}],
        paths=PATHS,
        schemas=SCHEMAS,
        security_schemes=SECURITY_SCHEMES,
    )
    doc["components"]["headers"] = {"Retry-After": RETRY_AFTER}
    return doc
