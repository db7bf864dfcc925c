"""Admin routes of the gates: the event's gate settings and presale code batches.

``GET /vwr/admin/events/{id}/access-codes`` lists the batches with their use;
``POST /vwr/admin/events/{id}/access-codes`` makes a batch (``count`` codes, each usable
``uses`` times, or one per account of ``accounts``, each bound to it); the plain codes are in
that answer only. ``GET .../access-codes/{batchId}`` says how many were used, ``POST
.../access-codes/{batchId}/revoke`` withdraws the batch. The event's ``placesPerClient`` and
``accessCodeRequired`` ride on ``PUT /vwr/admin/events/{id}`` (``parse_gate_fields`` before
anything is written, ``write_gate_fields`` after the event is).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response

from urr_vwr_lambda.admin import _int_field, require_admin
from urr_vwr_lambda.api import json_response, read_json_body, require_event_id
from urr_vwr_lambda.gates import codes
from urr_vwr_lambda.problem import VwrProblem

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import Router

    from urr_vwr_lambda.runtime import VwrRuntime

MAX_CODES_PER_BATCH = 1000
MAX_USES = 1_000_000
MAX_PLACES_PER_CLIENT = 1000
MAX_LABEL = 200
MAX_ACCOUNT_ID = 128


@dataclass(frozen=True)
class GateFields:
    places_per_client: int | None
    access_code_required: bool | None


def parse_gate_fields(body: dict[str, Any]) -> GateFields:
    """``placesPerClient`` (0 turns the cap off) and ``accessCodeRequired``, validated."""
    required = body.get("accessCodeRequired")
    if required is not None and not isinstance(required, bool):
        raise VwrProblem(422, "validation_failed", "accessCodeRequired must be true or false")
    return GateFields(
        places_per_client=_int_field(body, "placesPerClient", 0, MAX_PLACES_PER_CLIENT),
        access_code_required=required,
    )


def write_gate_fields(runtime: VwrRuntime, event_id: str, fields: GateFields) -> dict[str, Any]:
    """Store the fields given (before the event itself is written: its item may not exist
    yet, and the update makes it); the event's gate settings as they now stand."""
    gates = runtime.gates
    gates.store.set_config(
        event_id,
        places_per_client=fields.places_per_client,
        access_code_required=fields.access_code_required,
    )
    gates.forget(event_id)
    config = gates.store.get_config(event_id)
    places = gates.places_per_client(config) if config else gates.settings.places_per_client
    return {
        "placesPerClient": places,
        "accessCodeRequired": bool(config and config.access_code_required),
    }


def _accounts(body: dict[str, Any]) -> list[str] | None:
    accounts = body.get("accounts")
    if accounts is None:
        return None
    if (
        not isinstance(accounts, list)
        or not 1 <= len(accounts) <= MAX_CODES_PER_BATCH
        or not all(isinstance(a, str) and 0 < len(a) <= MAX_ACCOUNT_ID for a in accounts)
    ):
        raise VwrProblem(
            422,
            "validation_failed",
            f"accounts must be a list of 1 to {MAX_CODES_PER_BATCH} account ids",
        )
    return list(accounts)


def _batch_id(raw: str) -> str:
    if not codes.is_batch_id(raw):
        raise VwrProblem(404, "batch_not_found", "no such access code batch")
    return raw


def add_access_code_routes(router: Router, runtime: VwrRuntime) -> None:
    """Registers the batch routes on the admin router."""

    @router.post("/vwr/admin/events/<event_id>/access-codes")
    def create_batch(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        admin = require_admin(runtime, router)
        body = read_json_body(router)
        accounts = _accounts(body)
        count = _int_field(body, "count", 1, MAX_CODES_PER_BATCH)
        if accounts is not None and count is not None and count != len(accounts):
            raise VwrProblem(422, "validation_failed", "count must equal the number of accounts")
        count = len(accounts) if accounts is not None else count
        if count is None:
            raise VwrProblem(422, "validation_failed", "count (or accounts) is required")
        uses = _int_field(body, "uses", 1, MAX_USES) or 1
        label = body.get("label")
        if label is not None and (not isinstance(label, str) or len(label) > MAX_LABEL):
            raise VwrProblem(422, "validation_failed", f"label is text of at most {MAX_LABEL}")
        store = runtime.gates.store
        if store.get_config(event_id) is None:
            raise VwrProblem(404, "event_not_found", f"no waiting room for {event_id}")
        salt = store.ensure_salt(event_id, codes.new_salt())
        runtime.gates.forget(event_id)
        plain = [codes.new_code() for _ in range(count)]
        bound: list[str | None] = list(accounts) if accounts is not None else [None] * count
        batch_id = codes.new_batch_id()
        store.put_batch(
            event_id,
            batch_id,
            [
                (codes.code_hash(salt, codes.normalise(c) or ""), a)
                for c, a in zip(plain, bound, strict=True)
            ],
            max_uses=uses,
            label=label,
            created_by=admin,
            now_s=runtime.now_s(),
        )
        listed = [
            {"code": c, **({"account": a} if a is not None else {})}
            for c, a in zip(plain, bound, strict=True)
        ]
        return json_response(
            201,
            {
                "eventId": event_id,
                "batchId": batch_id,
                "uses": uses,
                "label": label,
                "codes": listed,
            },
        )

    @router.get("/vwr/admin/events/<event_id>/access-codes")
    def list_batches(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        store = runtime.gates.store
        if store.get_config(event_id) is None:
            raise VwrProblem(404, "event_not_found", f"no waiting room for {event_id}")
        found = [store.batch_usage(event_id, b) for b in store.batch_ids(event_id)]
        batches = [usage.to_dict() for usage in found if usage is not None]
        return json_response(
            200,
            {
                "eventId": event_id,
                "batches": batches,
                "used": sum(b["used"] for b in batches),
            },
        )

    @router.get("/vwr/admin/events/<event_id>/access-codes/<batch_id>")
    def batch_usage(event_id: str, batch_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        usage = runtime.gates.store.batch_usage(event_id, _batch_id(batch_id))
        if usage is None:
            raise VwrProblem(404, "batch_not_found", "no such access code batch")
        return json_response(200, {"eventId": event_id, **usage.to_dict()})

    @router.post("/vwr/admin/events/<event_id>/access-codes/<batch_id>/revoke")
    def revoke_batch(event_id: str, batch_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        store = runtime.gates.store
        batch_id = _batch_id(batch_id)
        if not store.revoke_batch(event_id, batch_id, now_s=runtime.now_s()):
            raise VwrProblem(404, "batch_not_found", "no such access code batch")
        usage = store.batch_usage(event_id, batch_id)
        return json_response(200, {"eventId": event_id, **(usage.to_dict() if usage else {})})
