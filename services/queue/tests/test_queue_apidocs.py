"""The OpenAPI documents against the code: routes, lint, and real answers.

A route the gateway serves publicly and no document describes, or a documented operation no
router serves, fails ``test_every_public_route_is_documented_and_nothing_else``; the documents
pass ``openapi-spec-validator`` (3.1); Tier-2 answers from the real service on real Redis
validate against their documented schemas.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from aiohttp import web
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from prometheus_client import CollectorRegistry

from urr_admission_log.app import create_app as create_log_app
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.settings import RedisSettings, load_settings
from urr_common.tokens import KeySet
from urr_gateway.routing import Upstream, match_route
from urr_queue.apidocs import DOCUMENTS
from urr_queue.app import create_app as create_queue_app
from urr_ticket.app import create_app as create_ticket_app
from urr_ticket.settings import TicketSettings
from urr_vwr_lambda import pow_gate
from urr_vwr_lambda.api import build_public_router

METHODS = ("get", "put", "post", "patch", "delete")
#: Gateway routes that serve pages, not an API (the site, its files, these documents).
NOT_API = {"event_page", "site_assets", "api_docs", "api_docs_files"}
Operation = tuple[str, str]


def _template(path: str) -> str:
    """A path with every parameter (``{x}`` or powertools' ``<x>``) as ``{}``."""
    return re.sub(r"\{[^}]+\}|<[^>]+>", "{}", path)


def documented(doc: dict[str, Any]) -> set[Operation]:
    return {
        (method.upper(), _template(path))
        for path, item in doc["paths"].items()
        for method in METHODS
        if method in item
    }


def public_aiohttp_routes(app: web.Application, upstream: Upstream) -> set[Operation]:
    """Routes of ``app`` the gateway sends to ``upstream`` without the admin role."""
    found = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource else {}
        path = info.get("path") or info.get("formatter")
        if not path or route.method in ("HEAD", "*"):
            continue
        match = match_route(tuple(path.strip("/").split("/")))
        if match is None or match.route.upstream is not upstream:
            continue
        if match.route.needs_role is not None or match.route.name in NOT_API:
            continue
        found.add((route.method, _template(path)))
    return found


def tier1_routes() -> set[Operation]:
    """The Tier-1 function's public route table (its admin router is IAM-guarded, not
    public). Building the routers reads nothing from the runtime."""
    runtime = cast(Any, None)
    found = set()
    for router in (build_public_router(runtime), pow_gate.build_challenge_router(runtime)):
        for key in router._routes:
            rule, methods = key[0], key[1]
            found |= {(method, _template(rule)) for method in methods}
    return found


def mismatches(served: Iterable[Operation], doc: dict[str, Any]) -> list[str]:
    served_set, doc_set = set(served), documented(doc)
    return [f"served, not documented: {m} {p}" for m, p in sorted(served_set - doc_set)] + [
        f"documented, not served: {m} {p}" for m, p in sorted(doc_set - served_set)
    ]


def _queue_app() -> web.Application:
    from urr_queue.settings import QueueSettings

    return create_queue_app(QueueSettings(environment="test"), registry=CollectorRegistry())


def _served() -> dict[str, set[Operation]]:
    ticket = create_ticket_app(
        load_settings(TicketSettings, environment="test"), registry=CollectorRegistry()
    )
    log = create_log_app(
        load_settings(AdmissionLogSettings, environment="test"),
        cast(Any, None),  # the pool is used per request only
        KeySet([]),
        registry=CollectorRegistry(),
    )
    return {
        "tier1.json": tier1_routes(),
        "tier2.json": public_aiohttp_routes(_queue_app(), Upstream.QUEUE),
        "booking.json": public_aiohttp_routes(ticket, Upstream.TICKET),
        "log.json": public_aiohttp_routes(log, Upstream.ADMISSION_LOG),
    }


def test_every_public_route_is_documented_and_nothing_else() -> None:
    served = _served()
    assert set(served) == set(DOCUMENTS)
    problems = {name: mismatches(served[name], build()) for name, (_, build) in DOCUMENTS.items()}
    assert problems == {name: [] for name in DOCUMENTS}
    # Not vacuous: each document has operations the routers really serve.
    assert all(len(ops) >= 4 for ops in served.values()), served


def test_a_drifted_document_is_caught() -> None:
    doc = DOCUMENTS["tier2.json"][1]()
    served = public_aiohttp_routes(_queue_app(), Upstream.QUEUE)
    del doc["paths"]["/api/v1/queue/{eventId}/leave"]
    doc["paths"]["/api/v1/queue/{eventId}/rejoin"] = {"post": {"responses": {}}}
    assert mismatches(served, doc) == [
        "served, not documented: POST /api/v1/queue/{}/leave",
        "documented, not served: POST /api/v1/queue/{}/rejoin",
    ]


@pytest.mark.parametrize("name", sorted(DOCUMENTS))
def test_the_documents_are_valid_openapi_3_1(name: str) -> None:
    doc = DOCUMENTS[name][1]()
    assert doc["openapi"].startswith("3.1")
    validate(doc)  # openapi-spec-validator: raises on any error
    for item in doc["paths"].values():
        for method in METHODS:
            if method in item:
                assert item[method]["responses"], f"{method} without responses"


def test_polling_advice_is_in_the_queue_and_room_documents() -> None:
    for name, words in (
        ("tier2.json", ("poll_after_seconds", "Retry-After")),
        ("tier1.json", ("pollAfterSeconds", "Retry-After")),
    ):
        text = DOCUMENTS[name][1]()["info"]["description"]
        assert "native clients" in text
        assert all(word in text for word in words), name


# --- real answers against the schemas ---------------------------------------------------


def _resolved(doc: dict[str, Any], schema: Any) -> Any:
    """``schema`` with every local ``$ref`` replaced (the documents have no cycles)."""
    if isinstance(schema, dict):
        if "$ref" in schema:
            return _resolved(doc, doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]])
        return {key: _resolved(doc, value) for key, value in schema.items()}
    if isinstance(schema, list):
        return [_resolved(doc, value) for value in schema]
    return schema


def _check(doc: dict[str, Any], path: str, method: str, answer: Any, body: Any) -> None:
    """The status is documented for the operation, with this media type and schema."""
    documented = doc["paths"][path][method]["responses"][str(answer.status)]
    content = documented["content"][answer.content_type]
    OAS31Validator(_resolved(doc, content["schema"])).validate(body)


async def test_tier2_answers_match_the_document(
    queue_client: Any, single_redis: RedisSettings, admin_headers: dict[str, str], as_user: Any
) -> None:
    doc = DOCUMENTS["tier2.json"][1]()
    client = await queue_client(single_redis)
    base = "/api/v1/queue/{eventId}"
    assert (
        await client.put("/api/v1/admin/queue/d1", json={"capacity": 1}, headers=admin_headers)
    ).status == 201
    calls = [
        ("post", "enter", as_user("u1")),
        ("get", "status", as_user("u1")),
        ("get", "capacity", {}),
        ("post", "leave", as_user("u1")),
        ("get", "status", as_user("u1")),  # gone: a problem
        ("get", "status", {}),  # no login: a problem
    ]
    for method, tail, headers in calls:
        answer = await client.request(method.upper(), f"/api/v1/queue/d1/{tail}", headers=headers)
        body = await answer.json(content_type=None)
        _check(doc, f"{base}/{tail}", method, answer, body)
    # Passthrough admits at once: the admitted shape.
    await client.patch(
        "/api/v1/admin/queue/d1", json={"mode": "passthrough"}, headers=admin_headers
    )
    answer = await client.post("/api/v1/queue/d1/enter", headers=as_user("u2"))
    body = await answer.json()
    assert body["status"] == "admitted"
    _check(doc, f"{base}/enter", "post", answer, body)
    # A pre-queue: the roster answer, and the refusal before it opens.
    soon = (datetime.now(UTC) + timedelta(seconds=30)).isoformat()
    pre = {
        "prequeue_start": datetime.now(UTC).isoformat(),
        "sale_start": soon,
        "prequeue_commitment": "ab" * 32,
    }
    assert (
        await client.put("/api/v1/admin/queue/d2", json=pre, headers=admin_headers)
    ).status == 201
    for method, tail in (("post", "enter"), ("get", "status")):
        answer = await client.request(
            method.upper(), f"/api/v1/queue/d2/{tail}", headers=as_user("u3")
        )
        body = await answer.json()
        assert body["status"] == "prequeue"
        _check(doc, f"{base}/{tail}", method, answer, body)
    later = {
        **pre,
        "prequeue_start": soon,
        "sale_start": (datetime.now(UTC) + timedelta(hours=1)).isoformat(),
    }
    await client.put("/api/v1/admin/queue/d3", json=later, headers=admin_headers)
    answer = await client.post("/api/v1/queue/d3/enter", headers=as_user("u3"))
    _check(doc, f"{base}/enter", "post", answer, await answer.json(content_type=None))
    served = await client.get("/api/docs/v1/tier2.json")
    assert served.status == 200
    assert await served.json() == doc
    assert (await client.get("/api/docs/v1/nope.json")).status == 404
    page = await client.get("/api/docs")
    assert page.status == 200
    assert "viewer.js" in await page.text()
