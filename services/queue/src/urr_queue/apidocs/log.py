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
            "parameters": [query_int("leaf", "Leaf index.")],
            "responses": {
                "200": json_body(ref("Receipt"), "The receipt."),
                "304": NOT_MODIFIED,
                "400": BAD_QUERY,
                "404": NO_LOG,
                "422": problem("The leaf is not signed yet.", "leaf_beyond_tree"),
            },
        },
    },
}

SCHEMAS: Json = {
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
