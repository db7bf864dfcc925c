"""Building blocks shared by the four OpenAPI 3.1 documents (plain dicts, no generator).

The documents are written by hand next to the code and held to it by
``tests/test_queue_apidocs.py``: every public route of the aiohttp routers and of the Tier-1
route table must be documented with its method, and nothing else may be.
"""

from __future__ import annotations

import copy
from typing import Any

OPENAPI_VERSION = "3.1.0"
EVENT_ID_PATTERN = "^[A-Za-z0-9_-]{1,64}$"

Json = dict[str, Any]

PROBLEM_SCHEMA: Json = {
    "type": "object",
    "description": "RFC 9457 problem details; `code` is stable and meant for programs.",
    "required": ["type", "title", "status", "detail", "code"],
    "properties": {
        "type": {"type": "string", "examples": ["urn:urr:problem:event_not_found"]},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "description": "Safe to show to a person."},
        "code": {"type": "string"},
        "instance": {"type": "string"},
    },
    "additionalProperties": True,
}

RETRY_AFTER: Json = {
    "description": "Seconds to wait before trying again. Native clients must honour it.",
    "schema": {"type": "integer", "minimum": 0},
}
RATELIMIT_HEADERS: Json = {
    "Retry-After": RETRY_AFTER,
    "RateLimit": {
        "description": "IETF httpapi draft: remaining quota and reset of the governing policy.",
        "schema": {"type": "string", "examples": ['"queue";r=0;t=12']},
    },
    "RateLimit-Policy": {
        "description": "IETF httpapi draft: the governing policy's quota and window.",
        "schema": {"type": "string", "examples": ['"queue";q=60;w=60']},
    },
}


def problem(description: str, *codes: str, headers: Json | None = None) -> Json:
    """A problem response naming the ``code`` values it may carry."""
    text = description + (f" Codes: {', '.join(f'`{c}`' for c in codes)}." if codes else "")
    answer: Json = {
        "description": text,
        "content": {
            "application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}
        },
    }
    if headers:
        answer["headers"] = headers
    return answer


def rate_limited(category: str) -> Json:
    return problem(
        f"Over the gateway's {category} rate limit; wait `Retry-After` seconds.",
        "rate_limited",
        headers=RATELIMIT_HEADERS,
    )


def unavailable(*codes: str) -> Json:
    return problem(
        "Briefly unavailable; retry after `Retry-After` seconds.",
        *codes,
        headers={"Retry-After": RETRY_AFTER},
    )


def json_body(schema: Json, description: str, headers: Json | None = None) -> Json:
    answer: Json = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def ref(name: str) -> Json:
    return {"$ref": f"#/components/schemas/{name}"}


def path_param(name: str, description: str, pattern: str | None = None) -> Json:
    schema: Json = {"type": "string"}
    if pattern:
        schema["pattern"] = pattern
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": description,
        "schema": schema,
    }


def query_int(name: str, description: str, minimum: int = 0) -> Json:
    return {
        "name": name,
        "in": "query",
        "required": True,
        "description": description,
        "schema": {"type": "integer", "minimum": minimum},
    }


EVENT_PARAM = path_param("eventId", "The event's id.", EVENT_ID_PATTERN)

#: Logged-in callers: the browser's ``access_token`` cookie, or the same JWT as a Bearer token
#: (what native apps send).
SECURITY_SCHEMES: Json = {
    "bearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The access token from `POST /api/v1/auth/login` (ES256 JWT).",
    },
    "cookieAuth": {
        "type": "apiKey",
        "in": "cookie",
        "name": "access_token",
        "description": "The same token as an HttpOnly cookie (browsers). State-changing "
        "requests authenticated by it must come from the site's own origin.",
    },
}
LOGGED_IN: list[Json] = [{"bearerAuth": []}, {"cookieAuth": []}]


def document(
    *,
    title: str,
    description: str,
    servers: list[Json],
    paths: Json,
    schemas: Json,
    security_schemes: Json | None = None,
) -> Json:
    components: Json = {"schemas": {"Problem": PROBLEM_SCHEMA, **schemas}}
    if security_schemes:
        components["securitySchemes"] = security_schemes
    # A copy: the parts are shared module constants, and a caller may change what it gets.
    return copy.deepcopy(
        {
            "openapi": OPENAPI_VERSION,
            "info": {"title": title, "version": "1.0.0", "description": description},
            "servers": servers,
            "paths": paths,
            "components": components,
        }
    )
