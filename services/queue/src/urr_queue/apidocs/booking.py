"""OpenAPI document of the booking API (the ticket service's ``routes.py``), as the gateway
serves it: the catalog is public, seats and reservations need a login and an entry token."""

from __future__ import annotations

from urr_queue.apidocs.common import (
    EVENT_PARAM,
    LOGGED_IN,
    SECURITY_SCHEMES,
    Json,
    document,
    json_body,
    path_param,
    problem,
    rate_limited,
    ref,
)

DESCRIPTION = """\
The booking API of the protected site: the event catalog, the seat map, seat holds and
reservations. Seat and reservation calls need a login **and** the Tier-2 entry token of the
same user and event (`x-queue-entry-token` header, or the `urr-entry-token` cookie); without it
the gateway answers `403` with `entry_token_missing`, `entry_token_invalid`,
`entry_token_expired`, `entry_token_wrong_event` or `entry_token_wrong_user`.

## Polling advice for native clients

A reservation is accepted (`202`) and then processed in order; poll its `Location` every 1-2 s
until `status` leaves `pending` (then `awaiting_payment`, `confirmed`, `declined`, `expired` or
`cancelled`). The BOOKING limit is 10 requests a minute per user: on `429` wait `Retry-After`.
The owner can still read a finished reservation without an entry token at
`GET /api/v1/events/{eventId}/reservations/{reservationId}`.
"""

ENTRY_TOKEN_HEADER: Json = {
    "name": "x-queue-entry-token",
    "in": "header",
    "required": False,
    "description": "The Tier-2 entry token (or the `urr-entry-token` cookie).",
    "schema": {"type": "string"},
}
SEAT_PARAM = path_param("seatId", "The seat's id, e.g. `A1`.")
RESERVATION_PARAM = path_param("reservationId", "The reservation's UUID.")
GATED_ERRORS: Json = {
    "401": problem("Log in first.", "login_required"),
    "403": problem(
        "No valid entry token for this user and event.",
        "entry_token_missing",
        "entry_token_invalid",
        "entry_token_expired",
        "entry_token_wrong_event",
        "entry_token_wrong_user",
    ),
    "429": rate_limited("BOOKING"),
}
ACCEPTED = json_body(
    ref("Accepted"),
    "Accepted; poll the reservation at `Location`.",
    headers={"Location": {"schema": {"type": "string"}}},
)


def _gated(operation: Json) -> Json:
    return {
        "security": LOGGED_IN,
        **operation,
        "parameters": [ENTRY_TOKEN_HEADER, *operation.get("parameters", [])],
        "responses": {**GATED_ERRORS, **operation["responses"]},
    }


PATHS: Json = {
    "/api/v1/events": {
        "get": {
            "operationId": "listEvents",
            "summary": "Every event on sale.",
            "responses": {
                "200": json_body(
                    {
                        "type": "object",
                        "required": ["events"],
                        "properties": {"events": {"type": "array", "items": ref("Event")}},
                    },
                    "The catalog.",
                ),
                "429": rate_limited("GENERAL"),
            },
        }
    },
    "/api/v1/events/{eventId}": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "getEvent",
            "summary": "One event.",
            "responses": {
                "200": json_body(ref("Event"), "The event."),
                "404": problem("No such event.", "event_not_found"),
                "429": rate_limited("GENERAL"),
            },
        },
    },
    "/api/v1/events/{eventId}/reservations/{reservationId}": {
        "parameters": [EVENT_PARAM, RESERVATION_PARAM],
        "get": {
            "operationId": "getOwnReservation",
            "summary": "The owner's reservation, without an entry token.",
            "security": LOGGED_IN,
            "responses": {
                "200": json_body(ref("Reservation"), "The reservation."),
                "401": problem("Log in first.", "login_required"),
                "404": problem("Not yours, or no such reservation.", "reservation_not_found"),
            },
        },
    },
    "/api/v1/seats/{eventId}": {
        "parameters": [EVENT_PARAM],
        "get": _gated(
            {
                "operationId": "seatMap",
                "summary": "Every seat with its state.",
                "responses": {
                    "200": json_body(ref("SeatMap"), "The seat map."),
                    "404": problem("No such event.", "event_not_found"),
                },
            }
        ),
    },
    "/api/v1/seats/{eventId}/{seatId}/hold": {
        "parameters": [EVENT_PARAM, SEAT_PARAM],
        "post": _gated(
            {
                "operationId": "holdSeat",
                "summary": "Hold a seat for a while (within the per-account cap).",
                "responses": {
                    "200": json_body(ref("Hold"), "Held by you (new or already)."),
                    "404": problem("No such seat.", "seat_not_found", "event_not_found"),
                    "409": problem(
                        "Not available to you.",
                        "seat_sold",
                        "seat_held",
                        "seat_limit_reached",
                        "hold_time_used",
                    ),
                },
            }
        ),
        "delete": _gated(
            {
                "operationId": "releaseSeat",
                "summary": "Release your hold.",
                "responses": {
                    "204": {"description": "Released."},
                    "404": problem("No such seat.", "seat_not_found", "event_not_found"),
                    "409": problem("You do not hold this seat.", "seat_not_held"),
                },
            }
        ),
    },
    "/api/v1/reservations/{eventId}": {
        "parameters": [EVENT_PARAM],
        "post": _gated(
            {
                "operationId": "reserve",
                "summary": "Reserve held seats (idempotent for the same holds).",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("ReserveRequest")}},
                },
                "responses": {
                    "202": ACCEPTED,
                    "404": problem("No such event or seat.", "event_not_found", "seat_not_found"),
                    "409": problem(
                        "Hold every seat first; a retry needs the previous attempt declined"
                        " by the card issuer.",
                        "seat_not_held",
                        "retry_not_allowed",
                    ),
                    "422": problem("Invalid body.", "validation_failed", "duplicate_seat"),
                },
            }
        ),
    },
    "/api/v1/reservations/{eventId}/{reservationId}": {
        "parameters": [EVENT_PARAM, RESERVATION_PARAM],
        "get": _gated(
            {
                "operationId": "getReservation",
                "summary": "Your reservation; poll until it leaves `pending`.",
                "responses": {
                    "200": json_body(ref("Reservation"), "The reservation."),
                    "404": problem("Not yours, or no such reservation.", "reservation_not_found"),
                },
            }
        ),
    },
    "/api/v1/reservations/{eventId}/{reservationId}/cancel": {
        "parameters": [EVENT_PARAM, RESERVATION_PARAM],
        "post": _gated(
            {
                "operationId": "cancelReservation",
                "summary": "Cancel your reservation.",
                "responses": {
                    "202": ACCEPTED,
                    "404": problem("Not yours, or no such reservation.", "reservation_not_found"),
                    "409": problem("Too late to cancel.", "not_cancellable"),
                },
            }
        ),
    },
    "/api/v1/reservations/{eventId}/{reservationId}/transfer": {
        "parameters": [EVENT_PARAM, RESERVATION_PARAM],
        "post": _gated(
            {
                "operationId": "transferReservation",
                "summary": "Give a confirmed reservation to another account.",
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": ref("TransferRequest")}},
                },
                "responses": {
                    "202": ACCEPTED,
                    "404": problem("Not yours, or no such reservation.", "reservation_not_found"),
                    "409": problem("Only a confirmed reservation moves.", "not_transferable"),
                    "422": problem(
                        "Invalid recipient.",
                        "validation_failed",
                        "transfer_to_self",
                        "recipient_not_found",
                    ),
                    "503": problem("The user directory is away.", "user_directory_unavailable"),
                },
            }
        ),
    },
    "/api/v1/stats/{eventId}": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "eventStats",
            "summary": "Seat and reservation counts of an event.",
            "responses": {
                "200": json_body(ref("Stats"), "The counts."),
                "404": problem("No such event.", "event_not_found"),
                "429": rate_limited("GENERAL"),
            },
        },
    },
}

SEAT_COUNTS: Json = {
    "type": "object",
    "required": ["total", "available"],
    "properties": {"total": {"type": "integer"}, "available": {"type": "integer"}},
}
SCHEMAS: Json = {
    "Event": {
        "type": "object",
        "required": ["eventId", "name", "seats"],
        "properties": {
            "eventId": {"type": "string"},
            "name": {"type": "string"},
            "venue": {"type": "string"},
            "startsAt": {"type": ["string", "null"], "format": "date-time"},
            "seats": SEAT_COUNTS,
            "maxSeatsPerUser": {"type": "integer"},
            "holdSeconds": {"type": "integer"},
        },
    },
    "SeatMap": {
        "type": "object",
        "required": ["eventId", "seats"],
        "properties": {
            "eventId": {"type": "string"},
            "seats": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["seatId", "row", "number", "priceCents", "state", "heldByYou"],
                    "properties": {
                        "seatId": {"type": "string"},
                        "row": {"type": "string"},
                        "number": {"type": "integer"},
                        "priceCents": {"type": "integer"},
                        "state": {"enum": ["free", "held", "sold"]},
                        "heldByYou": {"type": "boolean"},
                    },
                },
            },
        },
    },
    "Hold": {
        "type": "object",
        "required": ["eventId", "seatId", "holdId", "expiresAtMs", "maxSeatsPerUser"],
        "properties": {
            "eventId": {"type": "string"},
            "seatId": {"type": "string"},
            "holdId": {"type": "string"},
            "expiresAtMs": {"type": "integer"},
            "maxSeatsPerUser": {"type": "integer"},
        },
    },
    "ReserveRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["seatIds"],
        "properties": {
            "seatIds": {"type": "array", "minItems": 1, "items": {"type": "string"}},
            "attempt": {
                "type": "integer",
                "minimum": 1,
                "maximum": 5,
                "default": 1,
                "description": "Payment attempt on these holds: 2-5 retry after the previous"
                " attempt was declined with reason card_declined (the seats stay held).",
            },
        },
    },
    "TransferRequest": {
        "type": "object",
        "additionalProperties": False,
        "required": ["toUserId"],
        "properties": {"toUserId": {"type": "string"}},
    },
    "Accepted": {
        "type": "object",
        "required": ["reservationId", "eventId", "status"],
        "properties": {
            "reservationId": {"type": "string", "format": "uuid"},
            "eventId": {"type": "string"},
            "status": {"type": "string"},
        },
    },
    "Reservation": {
        "type": "object",
        "required": ["reservationId", "eventId", "seatIds", "status"],
        "properties": {
            "reservationId": {"type": "string", "format": "uuid"},
            "eventId": {"type": "string"},
            "userId": {"type": "string"},
            "seatIds": {"type": "array", "items": {"type": "string"}},
            "status": {
                "enum": [
                    "pending",
                    "awaiting_payment",
                    "confirmed",
                    "declined",
                    "expired",
                    "cancelled",
                ]
            },
            "reason": {"type": ["string", "null"], "description": "Why it was declined."},
            "amountCents": {"type": "integer"},
            "createdAt": {"type": "string", "format": "date-time"},
            "updatedAt": {"type": "string", "format": "date-time"},
        },
    },
    "Stats": {
        "type": "object",
        "required": ["eventId", "seats", "counters", "reservations"],
        "properties": {
            "eventId": {"type": "string"},
            "seats": SEAT_COUNTS,
            "counters": {"type": "object", "additionalProperties": {"type": "integer"}},
            "reservations": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
    },
}


def build() -> Json:
    return document(
        title="URR booking API",
        description=DESCRIPTION,
        servers=[{"url": "/", "description": "The site's gateway."}],
        paths=PATHS,
        schemas=SCHEMAS,
        security_schemes=SECURITY_SCHEMES,
    )
