"""The public, read-only log API (seeds 000/001 applied to the order of admission).

Everything answered about a *signed* tree never changes, so it is served
``public, max-age=31536000, immutable`` with a strong ETag (304 on a match): entry ranges inside
a signed tree, proofs for signed sizes. Only the latest tree head (and receipts, which carry
it) is short-lived. Requests that name leaves or sizes the log has not signed are 4xx problems,
never a guess, and never stored by a cache (``no-store``).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Any

import asyncpg
import orjson
from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_admission_log import heads, order_seed, prequeue, store
from urr_admission_log.settings import AdmissionLogSettings
from urr_common.fairness import roster_inclusion_proof
from urr_common.problems import BadRequest, NotFound, Unprocessable
from urr_common.service import create_service_app
from urr_common.tokens import KeySet

POOL_KEY = web.AppKey("urr_log_pool", asyncpg.Pool)
KEYS_KEY = web.AppKey("urr_log_keys", KeySet)
SETTINGS_KEY = web.AppKey("urr_log_settings", AdmissionLogSettings)

IMMUTABLE = "public, max-age=31536000, immutable"
_EVENT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_MAX_INDEX = 2**62
_MEMBER_RE = re.compile(r"^(?:[0-9a-f]{2}){1,64}$")


def _event(request: web.Request) -> str:
    event_id = request.match_info["eventId"]
    if not _EVENT_ID_RE.fullmatch(event_id):
        raise BadRequest("event ids are 1-64 letters, digits, '-' or '_'", code="invalid_event_id")
    return event_id


def _index(request: web.Request, name: str) -> int:
    raw = request.query.get(name)
    if raw is None:
        raise BadRequest(f"the query needs {name}=", code="missing_parameter", parameter=name)
    if not raw.isdigit() or len(raw) > 19 or int(raw) >= _MAX_INDEX:
        raise BadRequest(
            f"{name} must be a whole number from 0 to 2^62",
            code="invalid_parameter",
            parameter=name,
        )
    return int(raw)


def etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 If-None-Match: ``*`` or any listed tag equal to ours by *weak* comparison.

    Caches and CDNs that compress a body may hand our strong ``"x"`` on as ``W/"x"``, and the
    revalidation must still answer 304.
    """
    tags = [tag.strip() for tag in if_none_match.split(",")]
    return "*" in tags or etag.removeprefix("W/") in (tag.removeprefix("W/") for tag in tags)


def _json(request: web.Request, body: Mapping[str, Any], cache: str) -> web.Response:
    payload = orjson.dumps(body)
    etag = '"' + hashlib.sha256(payload).hexdigest()[:32] + '"'
    headers = {"Cache-Control": cache, "ETag": etag}
    if etag_matches(request.headers.get("If-None-Match", ""), etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=payload, content_type="application/json", headers=headers)


async def _no_store_for_problems(_: web.Request, response: web.StreamResponse) -> None:
    """A refusal is true only now (a range beyond the tree is served once a head covers it,
    an unknown log once it is signed): no cache may keep it, heuristically or otherwise."""
    if response.status >= 400:
        response.headers["Cache-Control"] = "no-store"


async def _latest_head(conn: store.Connection, event_id: str) -> heads.TreeHead:
    head = await heads.latest(conn, event_id)
    if head is None:
        raise NotFound(f"no tree head has been signed for {event_id!r}", code="log_not_found")
    return head


async def get_sth(request: web.Request) -> web.Response:
    event_id = _event(request)
    async with request.app[POOL_KEY].acquire() as conn:
        head = await _latest_head(conn, event_id)
    age = request.app[SETTINGS_KEY].admission_log.head_max_age_s
    body = {"eventId": event_id, "size": head.size, "root": head.root.hex(), "sth": head.sth}
    return _json(request, body, f"public, max-age={age}")


async def get_entries(request: web.Request) -> web.Response:
    event_id = _event(request)
    start, end = _index(request, "start"), _index(request, "end")
    page = request.app[SETTINGS_KEY].admission_log.max_page
    if end <= start or end - start > page:
        raise Unprocessable(
            f"need start < end with at most {page} entries", code="invalid_range", max=page
        )
    async with request.app[POOL_KEY].acquire() as conn:
        head = await _latest_head(conn, event_id)
        if end > head.size:
            raise Unprocessable(
                f"the latest signed tree has {head.size} entries",
                code="range_beyond_tree",
                treeSize=head.size,
            )
        leaves = await store.entries(conn, event_id, start, end)
    body = {"eventId": event_id, "start": start, "entries": [orjson.loads(leaf) for leaf in leaves]}
    return _json(request, body, IMMUTABLE)


async def _signed_size(conn: store.Connection, event_id: str, size: int) -> None:
    if not await heads.is_signed(conn, event_id, size):
        raise Unprocessable(
            f"no tree head of size {size} has been signed for {event_id!r}",
            code="size_not_signed",
        )


async def get_inclusion(request: web.Request) -> web.Response:
    event_id = _event(request)
    leaf, size = _index(request, "leaf"), _index(request, "size")
    if leaf >= size:
        raise Unprocessable("the leaf must be below the tree size", code="leaf_beyond_tree")
    async with request.app[POOL_KEY].acquire() as conn:
        await _signed_size(conn, event_id, size)
        proof = await store.inclusion_proof(conn, event_id, leaf, size)
        (encoded,) = await store.entries(conn, event_id, leaf, leaf + 1)
    body = {
        "eventId": event_id,
        "leafIndex": leaf,
        "treeSize": size,
        "leaf": orjson.loads(encoded),
        "proof": [item.hex() for item in proof],
    }
    return _json(request, body, IMMUTABLE)


async def get_consistency(request: web.Request) -> web.Response:
    event_id = _event(request)
    old, new = _index(request, "from"), _index(request, "to")
    if old > new:
        raise Unprocessable("from must not exceed to", code="invalid_range")
    async with request.app[POOL_KEY].acquire() as conn:
        await _signed_size(conn, event_id, new)
        if old:
            await _signed_size(conn, event_id, old)
        proof = await store.consistency_proof(conn, event_id, old, new)
    body = {"eventId": event_id, "from": old, "to": new, "proof": [item.hex() for item in proof]}
    return _json(request, body, IMMUTABLE)


async def get_receipt(request: web.Request) -> web.Response:
    """A buyer's receipt for a leaf: the leaf, its proof and the latest signed head.

    The leaf is named by its index (``leaf=``) or by the number its holder queued with
    (``ticket=``: the latest admission of it), which is what the waiting page knows.
    """
    event_id = _event(request)
    by_ticket = "ticket" in request.query
    if by_ticket == ("leaf" in request.query):
        raise BadRequest("the query needs leaf= or ticket=, not both", code="missing_parameter")
    async with request.app[POOL_KEY].acquire() as conn:
        if by_ticket:
            ticket = _index(request, "ticket")
            found = await store.admission_of_ticket(conn, event_id, ticket)
            if found is None:
                raise NotFound(
                    f"no admission of ticket {ticket} is logged for {event_id!r} (yet)",
                    code="ticket_not_logged",
                )
            leaf = found
        else:
            leaf = _index(request, "leaf")
        head = await _latest_head(conn, event_id)
        if leaf >= head.size:
            raise Unprocessable("the leaf is not in a signed tree yet", code="leaf_beyond_tree")
        proof = await store.inclusion_proof(conn, event_id, leaf, head.size)
        (encoded,) = await store.entries(conn, event_id, leaf, leaf + 1)
    age = request.app[SETTINGS_KEY].admission_log.head_max_age_s
    body = {
        "eventId": event_id,
        "leafIndex": leaf,
        "leaf": orjson.loads(encoded),
        "inclusionProof": [item.hex() for item in proof],
        "sth": head.sth,
    }
    return _json(request, body, f"public, max-age={age}")


async def get_prequeue(request: web.Request) -> web.Response:
    """The pre-queue's published data: the commitment from before it opened, then the frozen
    roster, its root and the revealed secret (``urr-verify shuffle`` reads this document)."""
    event_id = _event(request)
    async with request.app[POOL_KEY].acquire() as conn:
        found = await prequeue.document(conn, event_id)
    if found is None:
        raise NotFound(f"no pre-queue has been published for {event_id!r}", code="no_prequeue")
    body, complete = found
    age = request.app[SETTINGS_KEY].admission_log.head_max_age_s
    return _json(request, body, IMMUTABLE if complete else f"public, max-age={age}")


async def get_prequeue_proof(request: web.Request) -> web.Response:
    """A member's RFC 9162 inclusion proof in the roster's tree (its index and audit path)."""
    event_id = _event(request)
    member = request.query.get("member", "")
    if not _MEMBER_RE.fullmatch(member):
        raise BadRequest("member must be a hashed id in hex", code="invalid_parameter")
    async with request.app[POOL_KEY].acquire() as conn:
        found = await prequeue.document(conn, event_id)
    if found is None or not found[1]:
        raise NotFound(f"no revealed roster is published for {event_id!r}", code="no_prequeue")
    members: list[str] = found[0]["members"]
    try:
        index = members.index(member)
    except ValueError:
        raise NotFound("this member is not in the roster", code="not_in_roster") from None
    proof = roster_inclusion_proof([bytes.fromhex(m) for m in members], index)
    body = {
        "eventId": event_id,
        "member": member,
        "leafIndex": index,
        "treeSize": len(members),
        "root": found[0]["root"],
        "proof": [item.hex() for item in proof],
    }
    return _json(request, body, IMMUTABLE)


async def get_order_seed(request: web.Request) -> web.Response:
    """The random method's seed: its commitment from the moment the event used the method,
    the seed once revealed (``urr-verify audit --seed`` reads this document as is)."""
    event_id = _event(request)
    async with request.app[POOL_KEY].acquire() as conn:
        body = await order_seed.document(conn, event_id)
    if body is None:
        raise NotFound(
            f"no order seed has been committed for {event_id!r} (it is, once the event uses "
            "the random method)",
            code="no_order_seed",
        )
    age = request.app[SETTINGS_KEY].admission_log.head_max_age_s
    return _json(request, body, IMMUTABLE if body["revealed"] else f"public, max-age={age}")


async def get_jwks(request: web.Request) -> web.Response:
    return _json(request, request.app[KEYS_KEY].to_jwks(), "public, max-age=300")


def create_app(
    settings: AdmissionLogSettings,
    pool: asyncpg.Pool,
    keys: KeySet,
    *,
    registry: CollectorRegistry | None = None,
) -> web.Application:
    """The read API on an open pool; ``keys`` are the tree-head keys it publishes."""
    app = create_service_app(settings, registry=registry)
    app[POOL_KEY] = pool
    app[KEYS_KEY] = keys
    app[SETTINGS_KEY] = settings
    app.on_response_prepare.append(_no_store_for_problems)
    app.router.add_get("/v1/log/jwks.json", get_jwks)
    app.router.add_get("/v1/log/{eventId}/sth", get_sth)
    app.router.add_get("/v1/log/{eventId}/entries", get_entries)
    app.router.add_get("/v1/log/{eventId}/proof/inclusion", get_inclusion)
    app.router.add_get("/v1/log/{eventId}/proof/consistency", get_consistency)
    app.router.add_get("/v1/log/{eventId}/receipt", get_receipt)
    app.router.add_get("/v1/log/{eventId}/prequeue", get_prequeue)
    app.router.add_get("/v1/log/{eventId}/prequeue/proof", get_prequeue_proof)
    app.router.add_get("/v1/log/{eventId}/order-seed", get_order_seed)
    return app
