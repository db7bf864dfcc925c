"""The protected site's pages: the event page a visitor reaches once the waiting room lets
them through (``/events/{eventId}``), and its static files (``/site/assets/{name}``).

The page is static HTML; its script does the journey against the same-origin API (log in,
join the Tier-2 queue, pick a seat, reserve, follow the outcome). No inline script or style,
so the Content-Security-Policy allows only this origin's own files.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from aiohttp import web

from urr_common.problems import NotFound

_EVENT_ID = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
_ASSET_TYPES = {
    "event.js": "text/javascript",
    "event.css": "text/css",
    "messages.json": "application/json",
}
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


@cache
def _static(name: str) -> bytes:
    """A packaged file, read once per process (not on every request)."""
    return (resources.files("urr_ticket") / "static" / name).read_bytes()


def add_site_routes(app: web.Application) -> None:
    app.router.add_get("/events/{event_id}", event_page)
    app.router.add_get("/site/assets/{name}", site_asset)


async def event_page(request: web.Request) -> web.Response:
    # Whether the event exists is the script's first question (the catalog's 404), so a
    # crawler learns nothing here that the catalog would not tell it.
    if not _EVENT_ID.fullmatch(request.match_info["event_id"]):
        raise NotFound("no such event", code="event_not_found")
    return web.Response(
        body=_static("event.html"),
        content_type="text/html",
        charset="utf-8",
        headers={**_SECURITY_HEADERS, "Cache-Control": "no-store"},
    )


async def site_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    kind = _ASSET_TYPES.get(name)
    if kind is None:
        raise NotFound("no such file", code="not_found")
    return web.Response(
        body=_static(name),
        content_type=kind,
        headers={**_SECURITY_HEADERS, "Cache-Control": "public, max-age=300"},
    )
