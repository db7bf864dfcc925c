"""HTTP requests to CloudFront viewer-request events (the edge emulator)."""

from __future__ import annotations

from typing import Any

from aiohttp import web
from multidict import CIMultiDict


def viewer_request_event(request: web.Request) -> dict[str, Any]:
    """The event Lambda@Edge gets for ``request``: raw URI, raw query, headers by lower name."""
    raw_path, _, query = request.raw_path.partition("?")
    headers: dict[str, list[dict[str, str]]] = {}
    for name, value in request.headers.items():
        headers.setdefault(name.lower(), []).append({"key": name, "value": value})
    return {
        "Records": [
            {
                "cf": {
                    "config": {"eventType": "viewer-request", "distributionId": "LOCAL"},
                    "request": {
                        "clientIp": request.remote or "127.0.0.1",
                        "method": request.method,
                        "uri": raw_path,
                        "querystring": query,
                        "headers": headers,
                    },
                }
            }
        ]
    }


def edge_response(answer: dict[str, Any]) -> web.Response:
    """A generated response of the edge function as an HTTP answer."""
    headers: CIMultiDict[str] = CIMultiDict()
    for entries in (answer.get("headers") or {}).values():
        for entry in entries:
            headers.add(entry["key"], entry["value"])
    return web.Response(
        status=int(answer["status"]), body=str(answer.get("body", "")).encode(), headers=headers
    )
