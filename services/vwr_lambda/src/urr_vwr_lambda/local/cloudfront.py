"""HTTP requests to CloudFront viewer-request events (the edge emulator)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict


def viewer_event(
    client_ip: str, method: str, raw_target: str, fields: Iterable[tuple[str, str]]
) -> dict[str, Any]:
    """The event Lambda@Edge gets: raw URI, raw query, headers by lower name (whichever
    listener read the request)."""
    raw_path, _, query = raw_target.partition("?")
    headers: dict[str, list[dict[str, str]]] = {}
    for name, value in fields:
        headers.setdefault(name.lower(), []).append({"key": name, "value": value})
    return {
        "Records": [
            {
                "cf": {
                    "config": {"eventType": "viewer-request", "distributionId": "LOCAL"},
                    "request": {
                        "clientIp": client_ip,
                        "method": method,
                        "uri": raw_path,
                        "querystring": query,
                        "headers": headers,
                    },
                }
            }
        ]
    }


def viewer_request_event(request: web.Request) -> dict[str, Any]:
    """The event Lambda@Edge gets for ``request``: raw URI, raw query, headers by lower name."""
    return viewer_event(
        request.remote or "127.0.0.1", request.method, request.raw_path, request.headers.items()
    )


def generated_answer(answer: dict[str, Any]) -> tuple[int, list[tuple[str, str]], bytes]:
    """Status, header fields and body of a response the edge function generated."""
    headers = [
        (entry["key"], entry["value"])
        for entries in (answer.get("headers") or {}).values()
        for entry in entries
    ]
    return int(answer["status"]), headers, str(answer.get("body", "")).encode()


def edge_response(answer: dict[str, Any]) -> web.Response:
    """A generated response of the edge function as an HTTP answer."""
    status, fields, body = generated_answer(answer)
    headers: CIMultiDict[str] = CIMultiDict(fields)
    return web.Response(status=status, body=body, headers=headers)
