"""OpenAPI document of the public admission log (``urr_admission_log.app``)."""

from __future__ import annotations

from urr_queue.apidocs.common import (
    EVENT_PARAM,
    Json,
    document,
    json_body,
    problem,
    query_int,
    ref,
)

DESCRIPTION = """\
The append-only, signed log of every admission of an event (an RFC 9162-shaped Merkle tree).
Anyone may read it and verify a receipt with `urr-verify`. Fixed ranges and proofs never
change and are served `immutable` with strong ETags: cache them. The signed tree head
(`sth`) moves: poll it no more than its `Cache-Control: max-age`.
"""

HEX_LIST: Json = {"type": "array", "items": {"type": "string", "pattern": "^[0-9a-f]*$"}}
BAD_EVENT = problem("The event id is malformed.", "invalid_event_id")
BAD_QUERY = problem(
    "A query parameter is missing or not a whole number.", "missing_parameter", "invalid_parameter"
)
NO_LOG = problem("Nothing signed for this event yet.", "log_not_found")
NOT_MODIFIED: Json = {"description": "Unchanged since the given ETag."}

PATHS: Json = {
    "/v1/log/jwks.json": {
        "get": {
            "operationId": "logKeys",
            "summary": "The public keys tree heads are signed with (JWKS).",
            "responses": {"200": json_body({"type": "object"}, "A JWK set.")},
        }
    },
    "/v1/log/{eventId}/sth": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "latestTreeHead",
            "summary": "The latest signed tree head.",
            "responses": {
                "200": json_body(ref("TreeHead"), "The head."),
                "304": NOT_MODIFIED,
                "400": BAD_EVENT,
                "404": NO_LOG,
            },
        },
    },
    "/v1/log/{eventId}/entries": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "entries",
            "summary": "Leaves `start` (inclusive) to `end` (exclusive).",
            "description": "Each leaf is a JSON object with a `kind`: `admit` and `waive` "
            "(admissions to the queue and the waivers that explain them), and for a Tier-1 "
            "room with the random method `tier1-grant`, `tier1-waive` and `tier1-pass` (its "
            'draw, place by place: tools/verify/README.md, "Tier 1\'s random draw"), which '
            "`urr-verify audit --seed` checks against the revealed order seed.",
            "parameters": [query_int("start", "First leaf."), query_int("end", "After the last.")],
            "responses": {
                "200": json_body(ref("Entries"), "The leaves."),
                "304": NOT_MODIFIED,
                "400": BAD_QUERY,
                "404": NO_LOG,
                "422": problem("Bad range.", "invalid_range", "range_beyond_tree"),
            },
        },
    },
    "/v1/log/{eventId}/proof/inclusion": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "inclusionProof",
            "summary": "Proof that leaf `leaf` is in the tree of size `size`.",
            "parameters": [query_int("leaf", "Leaf index."), query_int("size", "Tree size.", 1)],
            "responses": {
                "200": json_body(ref("InclusionProof"), "The proof."),
                "304": NOT_MODIFIED,
                "400": BAD_QUERY,
                "422": problem("Bad leaf or size.", "leaf_beyond_tree", "size_not_signed"),
            },
        },
    },
    "/v1/log/{eventId}/proof/consistency": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "consistencyProof",
            "summary": "Proof that the tree of size `to` extends the one of size `from`.",
            "parameters": [query_int("from", "Older size."), query_int("to", "Newer size.")],
            "responses": {
                "200": json_body(ref("ConsistencyProof"), "The proof."),
                "304": NOT_MODIFIED,
                "400": BAD_QUERY,
                "422": problem("Bad sizes.", "invalid_range", "size_not_signed"),
            },
        },
    },
    "/v1/log/{eventId}/receipt": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "receipt",
            "summary": "A buyer's receipt: the leaf, its proof and the latest signed head.",
            "description": "Name the leaf by `leaf` (its index) or by `ticket` (the number "
            "its holder queued with, `queue_number` in the queue's answers: its latest "
            "admission), not both.",
            "parameters": [
                {**query_int("leaf", "Leaf index."), "required": False},
                {**query_int("ticket", "The holder's queue number."), "required": False},
            ],
            "responses": {
                "200": json_body(ref("Receipt"), "The receipt."),
                "304": NOT_MODIFIED,
                "400": BAD_QUERY,
                "404": problem(
                    "Nothing signed, or no admission of the ticket logged yet.",
                    "log_not_found",
                    "ticket_not_logged",
                ),
                "422": problem("The leaf is not signed yet.", "leaf_beyond_tree"),
            },
        },
    },
    "/v1/log/{eventId}/prequeue": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "prequeue",
            "summary": "The pre-queue's published data: `urr-verify shuffle` reads it as is.",
            "description": "Before the sale: the commitment (SHA-256 of the secret) and the "
            "times, short-lived. After the reveal: also the frozen roster (salted hashed ids in "
            "join order), its Merkle root and the secret, `immutable` once every member is in.",
            "responses": {
                "200": json_body(ref("Prequeue"), "What has been published."),
                "304": NOT_MODIFIED,
                "400": BAD_EVENT,
                "404": problem("No pre-queue published for this event.", "no_prequeue"),
            },
        },
    },
    "/v1/log/{eventId}/prequeue/proof": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "prequeueMembership",
            "summary": "A member's RFC 9162 inclusion proof in the roster's tree.",
            "parameters": [
                {
                    "name": "member",
                    "in": "query",
                    "required": True,
                    "description": "The hashed id the queue answered with (`member_id`).",
                    "schema": {"type": "string", "pattern": "^([0-9a-f]{2})+$"},
                }
            ],
            "responses": {
                "200": json_body(ref("RosterProof"), "The proof."),
                "304": NOT_MODIFIED,
                "400": problem(
                    "Malformed event or member.", "invalid_event_id", "invalid_parameter"
                ),
                "404": problem("Not revealed, or not a member.", "no_prequeue", "not_in_roster"),
            },
        },
    },
    "/v1/log/{eventId}/order-seed": {
        "parameters": [EVENT_PARAM],
        "get": {
            "operationId": "orderSeed",
            "summary": "The random method's seed: `urr-verify audit --seed` reads it as is.",
            "description": "From the moment the event uses the `random` method: the "
            "commitment (SHA-256 of the seed), short-lived. Once the line is over and the "
            "operator revealed it: also the seed, `immutable`. Admissions of the method carry "
            "their order key (`key`, HMAC-SHA1 of the seed and the arrival id, 52 bits).",
            "responses": {
                "200": json_body(ref("OrderSeed"), "What has been published."),
                "304": NOT_MODIFIED,
                "400": BAD_EVENT,
                "404": problem("No order seed committed for this event.", "no_order_seed"),
            },
        },
    },
}

SCHEMAS: Json = {
    "OrderSeed": {
        "type": "object",
        "required": ["eventId", "method", "commitment", "committedAt", "revealed"],
        "properties": {
            "eventId": {"type": "string"},
            "method": {"const": "random"},
            "commitment": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "committedAt": {"type": "string", "format": "date-time"},
            "revealed": {"type": "boolean"},
            "seed": {"type": "string", "pattern": "^([0-9a-f]{2})+$"},
            "revealedAt": {"type": "string", "format": "date-time"},
        },
    },
    "Prequeue": {
        "type": "object",
        "required": ["eventId", "commitment", "prequeueStart", "saleStart", "revealed"],
        "properties": {
            "eventId": {"type": "string"},
            "commitment": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "prequeueStart": {"type": "string", "format": "date-time"},
            "saleStart": {"type": "string", "format": "date-time"},
            "revealed": {"type": "boolean"},
            "size": {"type": "integer", "minimum": 0},
            "root": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
            "secret": {"type": "string", "pattern": "^([0-9a-f]{2})+$"},
            "membersPublished": {"type": "integer", "minimum": 0},
            "members": {
                **HEX_LIST,
                "description": "Present once all `size` members are published.",
            },
        },
    },
    "RosterProof": {
        "type": "object",
        "required": ["eventId", "member", "leafIndex", "treeSize", "root", "proof"],
        "properties": {
            "eventId": {"type": "string"},
            "member": {"type": "string"},
            "leafIndex": {"type": "integer", "minimum": 0},
            "treeSize": {"type": "integer", "minimum": 1},
            "root": {"type": "string"},
            "proof": HEX_LIST,
        },
    },
    "TreeHead": {
        "type": "object",
        "required": ["eventId", "size", "root", "sth"],
        "properties": {
            "eventId": {"type": "string"},
            "size": {"type": "integer", "minimum": 0},
            "root": {"type": "string", "pattern": "^[0-9a-f]*$"},
            "sth": {"type": "string", "description": "The signed head (a compact JWS)."},
        },
    },
    "Entries": {
        "type": "object",
        "required": ["eventId", "start", "entries"],
        "properties": {
            "eventId": {"type": "string"},
            "start": {"type": "integer"},
            "entries": {"type": "array", "items": {"type": "object"}},
        },
    },
    "InclusionProof": {
        "type": "object",
        "required": ["eventId", "leafIndex", "treeSize", "leaf", "proof"],
        "properties": {
            "eventId": {"type": "string"},
            "leafIndex": {"type": "integer"},
            "treeSize": {"type": "integer"},
            "leaf": {"type": "object"},
            "proof": HEX_LIST,
        },
    },
    "ConsistencyProof": {
        "type": "object",
        "required": ["eventId", "from", "to", "proof"],
        "properties": {
            "eventId": {"type": "string"},
            "from": {"type": "integer"},
            "to": {"type": "integer"},
            "proof": HEX_LIST,
        },
    },
    "Receipt": {
        "type": "object",
        "required": ["eventId", "leafIndex", "leaf", "inclusionProof", "sth"],
        "properties": {
            "eventId": {"type": "string"},
            "leafIndex": {"type": "integer"},
            "leaf": {"type": "object"},
            "inclusionProof": HEX_LIST,
            "sth": {"type": "string"},
        },
    },
}


def build() -> Json:
    return document(
        title="URR admission log",
        description=DESCRIPTION,
        servers=[{"url": "/", "description": "The edge (and the gateway)."}],
        paths=PATHS,
        schemas=SCHEMAS,
    )
