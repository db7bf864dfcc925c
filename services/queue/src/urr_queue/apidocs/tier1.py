"""OpenAPI document of the Tier-1 waiting room's public API (``urr_vwr_lambda.api`` and
``pow_gate``), as the edge serves it under ``/vwr-api``."""

from __future__ import annotations

from urr_queue.apidocs.common import (
    EVENT_PARAM,
    RETRY_AFTER,
    Json,
    document,
    json_body,
    path_param,
    problem,
    ref,
)

DESCRIPTION = """\
The edge waiting room. A client takes a numbered place with a `requestId` it generated (a
UUID, kept across restarts of the app: the same `requestId` always gets the same place), then
checks it until its number is served and the answer carries the Tier-1 pass (`token`, also set
as the HttpOnly `urr-vwr-token` cookie). The pass admits once to the event's site and Tier-2
queue (send it to `enter` as the `X-Vwr-Token` header or the cookie).

## Polling advice for native clients

* Check again after **`pollAfterSeconds`** (2-30 s, about half the time left): a few checks on
  the way to the front (five from 25 s away, six from a minute), every 2 s only in the last
  seconds. A client that stops checking for two minutes loses the place.
* On `429` or `503`, wait the `Retry-After` seconds. `409 assign_conflict` means another tab of
  the same client is taking the place: retry the same `requestId`.
* `GET status` is public and cacheable (`ETag`, `Cache-Control`): use `If-None-Match`.
* `410` means the place is gone for good (`position_abandoned`, `place_spent`): take a new one
  with a new `requestId`.
* An event with a pre-queue answers `409 prequeue_not_open` (with `prequeueStart` and
  `saleStart`) before it opens. From then until `saleStart` every place is let in at its
  first check with a pre-queue pass (`"prequeue": true`, with `saleStart`): take it to the
  Tier-2 `enter`, which puts you on the roster shuffled at sale start. Places taken later
  are numbered and wait as usual, behind the roster.
* Events with a bot challenge answer `403 pow_required`: fetch `GET challenge`, solve it and
  send `pow` with the assign.
"""

QUEUE_METHOD: Json = {
    "enum": ["fifo", "random", "passthrough", "reject"],
    "description": "How the line is ordered: by arrival (`fifo`), by a draw from the event's "
    "seed made at entry (`random`: `ahead` and `etaSeconds` are then null), everyone straight "
    "in (`passthrough`), or nobody waits (`reject`: assigns are `409 event_closed`).",
}

PLACE_FIGURES: Json = {
    "position": {"type": "integer", "minimum": 1},
    "ahead": {"type": ["integer", "null"], "minimum": 0},
    "servingCounter": {"type": "integer", "minimum": 0},
    "etaSeconds": {"type": ["integer", "null"]},
    "pollAfterSeconds": {"type": "integer", "minimum": 1},
    "queueMethod": QUEUE_METHOD,
}

PATHS: Json = {
    "/vwr/assign/{eventId}": {
        "parameters": [EVENT_PARAM],
        "post": {
            "operationId": "assignPlace",
            "summary": "Take a numbered place (idempotent per requestId).",
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": ref("AssignRequest")}},
            },
            "responses": {
                "201": json_body(ref("Assigned"), "A new place."),
                "200": json_body(ref("Assigned"), "The place this requestId already has."),
                "400": problem("Malformed request.", "bad_request", "bad_request_id"),
                "403": problem(
                    "Refused at the door (bot challenge or presale code).",
                    "pow_required",
                    "pow_invalid",
                    "pow_wrong_event",
                    "pow_expired",
                    "access_code_required",
                    "access_code_invalid",
                    "access_code_revoked",
                    "access_code_exhausted",
                    "access_code_login_required",
                    "access_code_other_account",
                ),
                "404": problem("No waiting room for this event.", "event_not_found"),
                "409": problem(
                    "Retry with the same requestId, go straight in, or sold out / closed.",
                    "assign_conflict",
                    "pow_replayed",
                    "room_inactive",
                    "event_closed",
                    "prequeue_not_open",
                ),
                "413": problem("The body is too large.", "payload_too_large"),
                "415": problem("Send application/json.", "unsupported_media_type"),
                "422": problem("Invalid fields.", "validation_failed", "bad_request_id"),
                "429": problem(
                    "Too many places or calls from this client.",
                    "too_many_places",
                    "client_busy",
                    "throttled",
                    headers={"Retry-After": RETRY_AFTER},
                ),
            },
        },
    },
    "/vwr/check/{eventId}/{requestId}": {
        "parameters": [EVENT_PARAM, path_param("requestId", "The UUID used to assign.")],
        "get": {
            "operationId": "checkPlace",
            "summary": "Where the place stands; admitted places get the Tier-1 pass.",
            "responses": {
                "200": json_body(
                    {"oneOf": [ref("Waiting"), ref("AdmittedPlace")]},
                    "Waiting (check again after `pollAfterSeconds`) or admitted.",
                    headers={
                        "Set-Cookie": {
                            "description": "`urr-vwr-token` (HttpOnly) when admitted.",
                            "schema": {"type": "string"},
                        }
                    },
                ),
                "400": problem("Malformed request id.", "bad_request_id"),
                "404": problem("Unknown event or place.", "event_not_found", "position_not_found"),
                "409": problem(
                    "The room is off (go straight in), or it takes nobody (sold out / closed).",
                    "room_inactive",
                    "event_closed",
                ),
                "410": problem(
                    "The place is gone: take a new one.", "position_abandoned", "place_spent"
                ),
                "429": problem("Throttled.", "throttled", headers={"Retry-After": RETRY_AFTER}),
            },
        },
    },
    "/vwr/status/{eventId}": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "roomStatus",
            "summary": "The room's public counters (cacheable).",
            "parameters": [
                {
                    "name": "If-None-Match",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                }
            ],
            "responses": {
                "200": json_body(
                    ref("RoomStatus"),
                    "The counters.",
                    headers={
                        "ETag": {"schema": {"type": "string"}},
                        "Cache-Control": {"schema": {"type": "string"}},
                    },
                ),
                "304": {"description": "Unchanged since the given ETag."},
                "404": problem("No waiting room for this event.", "event_not_found"),
            },
        },
    },
    "/vwr/challenge/{eventId}": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "powChallenge",
            "summary": "A proof-of-work challenge, when the event asks for one.",
            "responses": {
                "200": json_body(ref("Challenge"), "A challenge, or `botChallenge: none`."),
                "404": problem("No waiting room for this event.", "event_not_found"),
            },
        },
    },
}

SCHEMAS: Json = {
    "AssignRequest": {
        "type": "object",
        "required": ["requestId"],
        "properties": {
            "requestId": {"type": "string", "format": "uuid"},
            "pow": {
                "type": "object",
                "required": ["challenge", "counter"],
                "properties": {
                    "challenge": {"type": "string"},
                    "counter": {"type": "integer", "minimum": 0},
                },
            },
            "accessCode": {"type": "string", "description": "A presale code, when asked."},
        },
    },
    "Assigned": {
        "type": "object",
        "required": ["eventId", "requestId", "position", "ahead", "servingCounter"],
        "properties": {
            "eventId": {"type": "string"},
            "requestId": {"type": "string"},
            **PLACE_FIGURES,
        },
    },
    "Waiting": {
        "type": "object",
        "required": ["eventId", "requestId", "admitted", "position", "pollAfterSeconds"],
        "properties": {
            "eventId": {"type": "string"},
            "requestId": {"type": "string"},
            "admitted": {"const": False},
            **PLACE_FIGURES,
        },
    },
    "AdmittedPlace": {
        "type": "object",
        "required": ["eventId", "requestId", "admitted", "token", "tokenExpiresAt"],
        "properties": {
            "eventId": {"type": "string"},
            "requestId": {"type": "string"},
            "admitted": {"const": True},
            "position": {"type": "integer"},
            "ahead": {"const": 0},
            "servingCounter": {"type": "integer"},
            "etaSeconds": {"const": 0},
            "token": {"type": "string", "description": "The Tier-1 pass (ES256 JWT)."},
            "tokenExpiresAt": {"type": "integer", "description": "Unix seconds."},
        },
    },
    "RoomStatus": {
        "type": "object",
        "required": ["eventId", "isActive", "servingCounter", "nextPosition", "updatedAt"],
        "properties": {
            "eventId": {"type": "string"},
            "isActive": {"type": "boolean"},
            "servingCounter": {"type": "integer", "minimum": 0},
            "nextPosition": {"type": "integer", "minimum": 0},
            "waiting": {"type": "integer", "minimum": 0},
            "updatedAt": {"type": "integer", "description": "Unix milliseconds."},
            "queueMethod": QUEUE_METHOD,
            "orderSeedCommitment": {
                "type": "string",
                "pattern": "^[0-9a-f]{64}$",
                "description": "SHA-256 of the event's order seed (hex), public while the "
                "seed is secret: the seed revealed later must hash to it.",
            },
        },
    },
    "Challenge": {
        "type": "object",
        "required": ["eventId", "botChallenge"],
        "properties": {
            "eventId": {"type": "string"},
            "botChallenge": {"enum": ["none", "pow"]},
            "challenge": {"type": "string"},
            "bits": {"type": "integer"},
            "expiresAt": {"type": "integer"},
            "algorithm": {"type": "string"},
        },
    },
}


def build() -> Json:
    return document(
        title="URR Tier 1: edge waiting room",
        description=DESCRIPTION,
        servers=[{"url": "/vwr-api", "description": "The edge (CloudFront) path of the API."}],
        paths=PATHS,
        schemas=SCHEMAS,
    )
