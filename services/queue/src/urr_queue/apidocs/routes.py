"""``GET /api/docs`` (a viewer with no outside resources) and ``GET /api/docs/v1/<file>``."""

from __future__ import annotations

from importlib.resources import files

import orjson
from aiohttp import web

from urr_common.problems import NotFound
from urr_queue.apidocs import DOCUMENTS

_STATIC = files("urr_queue.apidocs") / "static"
_ASSETS = {"viewer.js": "text/javascript", "viewer.css": "text/css"}
_CACHE = {"Cache-Control": "public, max-age=300", "X-Content-Type-Options": "nosniff"}
_PAGE = {
    **_CACHE,
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}


def _rendered() -> dict[str, bytes]:
    bodies = {name: orjson.dumps(build()) for name, (_, build) in DOCUMENTS.items()}
    bodies["index.json"] = orjson.dumps(
        {"documents": [{"file": name, "title": title} for name, (title, _) in DOCUMENTS.items()]}
    )
    return bodies


_BODIES = _rendered()


async def viewer(request: web.Request) -> web.Response:
    html = (_STATIC / "index.html").read_text(encoding="utf-8")
    return web.Response(text=html, content_type="text/html", headers=_PAGE)


async def document_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name in _BODIES:
        return web.Response(body=_BODIES[name], content_type="application/json", headers=_CACHE)
    if name in _ASSETS:
        text = (_STATIC / name).read_text(encoding="utf-8")
        return web.Response(text=text, content_type=_ASSETS[name], headers=_CACHE)
    raise NotFound(f"no document {name!r}; see /api/docs/v1/index.json", code="not_found")


def add_api_docs(app: web.Application) -> None:
    app.router.add_get("/api/docs", viewer)
    app.router.add_get("/api/docs/v1/{name}", document_file)
