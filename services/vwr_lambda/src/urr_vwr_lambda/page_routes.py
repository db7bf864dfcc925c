"""Admin routes of the waiting page's per-event look: ``PUT`` and ``GET
/vwr/admin/events/{id}/page`` (see ``page_document`` for the fields).

A PUT replaces the settings as a whole (what it leaves out goes back to the page's default),
stores them on the event's item and publishes the event document at once; the document then
reaches viewers within its cache lifetime.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import Response
from botocore.exceptions import BotoCoreError, ClientError

from urr_vwr_lambda.admin import require_admin
from urr_vwr_lambda.api import json_response, read_json_body, require_event_id
from urr_vwr_lambda.page_document import (
    PageSettings,
    build_page_document,
    parse_page_settings,
)
from urr_vwr_lambda.problem import VwrProblem
from urr_vwr_lambda.store import EventNotFound

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler.api_gateway import Router

    from urr_vwr_lambda.runtime import VwrRuntime


def _no_event(event_id: str) -> VwrProblem:
    return VwrProblem(404, "event_not_found", f"no waiting room for {event_id}")


def publish_page(runtime: VwrRuntime, event_id: str) -> dict[str, Any]:
    """Build the event's document from what is stored and publish it; the document."""
    stored = runtime.store.get_page(event_id)
    if stored is None:
        raise _no_event(event_id)
    document = build_page_document(
        event_id,
        PageSettings.from_stored(stored.page_json),
        queue_method=stored.queue_method,
        updated_at_ms=stored.updated_at_ms,
        prequeue=stored.prequeue,
    )
    try:
        runtime.publish_page_document(event_id, document)
    except (OSError, ValueError, ClientError, BotoCoreError) as exc:
        # Stored all the same: the next PUT (or a retry of this one) publishes it.
        runtime.logger.warning("page_document_not_published", extra={"error": str(exc)})
        raise VwrProblem(
            503,
            "page_not_published",
            "the settings are stored but the page document could not be published; try again",
            headers={"Retry-After": "5"},
        ) from exc
    parsed: dict[str, Any] = json.loads(document)
    return parsed


def refresh_page(runtime: VwrRuntime, event_id: str) -> None:
    """Republish the event's document after a change to the event (its ``queueMethod`` may
    have changed); best effort: the event's change stands, a failure is only logged."""
    try:
        publish_page(runtime, event_id)
    except VwrProblem as exc:
        runtime.logger.warning("page_document_not_refreshed", extra={"error": exc.detail})


def add_page_routes(router: Router, runtime: VwrRuntime) -> None:
    @router.put("/vwr/admin/events/<event_id>/page")
    def put_page(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        settings = parse_page_settings(read_json_body(router))
        try:
            runtime.store.set_page(
                event_id,
                json.dumps(settings.to_stored(), sort_keys=True, ensure_ascii=False),
                now_ms=runtime.now_ms(),
            )
        except EventNotFound as exc:
            raise _no_event(event_id) from exc
        return json_response(200, publish_page(runtime, event_id))

    @router.get("/vwr/admin/events/<event_id>/page")
    def get_page(event_id: str) -> Response[str]:
        event_id = require_event_id(event_id)
        require_admin(runtime, router)
        stored = runtime.store.get_page(event_id)
        if stored is None:
            raise _no_event(event_id)
        return json_response(200, PageSettings.from_stored(stored.page_json).to_stored())
