"""HTTP requests to API Gateway REST (v1) proxy events and results back (the API emulator)."""

from __future__ import annotations

import base64
import random
import time
from collections.abc import Iterable
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

_random_bits = random.getrandbits


def request_uuid() -> str:
    """A version 4 UUID as text, as API Gateway's request ids are: from the interpreter's
    generator (seeded from the OS; an id, not a secret) instead of ``uuid.uuid4()``'s
    ``os.urandom`` system call and ``UUID`` object per request."""
    bits = f"{_random_bits(128):032x}"
    variant = "89ab"[int(bits[16], 16) & 3]
    return f"{bits[:8]}-{bits[8:12]}-4{bits[13:16]}-{variant}{bits[17:20]}-{bits[20:]}"


def rest_event(request: web.Request, body: bytes) -> dict[str, Any]:
    """The proxy event API Gateway would send for ``request`` (``/{proxy+}`` resource)."""
    return proxy_event(
        request.method,
        request.path,
        request.query.items(),
        request.headers.items(),
        f"HTTP/{request.version.major}.{request.version.minor}",
        request.remote or "127.0.0.1",
        body,
    )


def proxy_event(
    method: str,
    path: str,
    query_items: Iterable[tuple[str, str]],
    header_items: Iterable[tuple[str, str]],
    protocol: str,
    source_ip: str,
    body: bytes,
) -> dict[str, Any]:
    """The proxy event of a request given by its parts (the decoded path, the decoded query
    and header fields in order, ``HTTP/1.1``), whichever server read it."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in header_items:
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for name, value in query_items:
        query[name] = value
        multi_query.setdefault(name, []).append(value)
    try:
        text: str | None = body.decode("utf-8") if body else None
        is_base64 = False
    except UnicodeDecodeError:
        text, is_base64 = base64.b64encode(body).decode(), True
    return {
        "resource": "/{proxy+}",
        "path": path,
        "httpMethod": method,
        "headers": headers,
        "multiValueHeaders": multi_headers,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": {"proxy": path.lstrip("/")},
        "stageVariables": None,
        "requestContext": {
            "accountId": "000000000000",
            "apiId": "local",
            "stage": "local",
            "resourcePath": "/{proxy+}",
            "httpMethod": method,
            "path": path,
            "protocol": protocol,
            "requestId": request_uuid(),
            "requestTimeEpoch": int(time.time() * 1000),
            "identity": {
                "sourceIp": source_ip,
                "userAgent": headers.get("User-Agent", ""),
            },
        },
        "body": text,
        "isBase64Encoded": is_base64,
    }


#: The event a warm-up invocation carries: a status read, which builds the function's
#: clients with one GetItem and changes nothing.
WARMUP_PATH = "/vwr/status/urr-warmup"


def warmup_event(headers: dict[str, str] | None = None) -> dict[str, Any]:
    """A GET of ``WARMUP_PATH`` as API Gateway would send it (``headers``: the origin one)."""
    context = {
        "accountId": "000000000000",
        "apiId": "local",
        "stage": "local",
        "resourcePath": "/{proxy+}",
        "httpMethod": "GET",
        "path": WARMUP_PATH,
        "protocol": "HTTP/1.1",
        "requestId": "warmup",
        "requestTimeEpoch": int(time.time() * 1000),
        "identity": {"sourceIp": "127.0.0.1", "userAgent": "urr-warmup"},
    }
    return {
        "resource": "/{proxy+}",
        "path": WARMUP_PATH,
        "httpMethod": "GET",
        "headers": dict(headers or {}),
        "multiValueHeaders": {name: [value] for name, value in (headers or {}).items()},
        "queryStringParameters": None,
        "multiValueQueryStringParameters": None,
        "pathParameters": {"proxy": WARMUP_PATH.lstrip("/")},
        "stageVariables": None,
        "requestContext": context,
        "body": None,
        "isBase64Encoded": False,
    }


def result_headers(result: dict[str, Any]) -> CIMultiDict[str]:
    """The answer's header fields API Gateway makes of a proxy integration's result (without
    ``Content-Length``: the server frames the body)."""
    headers: CIMultiDict[str] = CIMultiDict()
    for name, value in (result.get("headers") or {}).items():
        headers[name] = str(value)
    for name, values in (result.get("multiValueHeaders") or {}).items():
        if name in headers and name.lower() != "set-cookie":
            continue
        for value in values:
            headers.add(name, str(value))
    headers.pop("Content-Length", None)
    return headers


def result_body(result: dict[str, Any]) -> bytes:
    """The answer's body bytes of a proxy integration's result."""
    raw = result.get("body") or ""
    return base64.b64decode(raw) if result.get("isBase64Encoded") else raw.encode()


def http_response(result: dict[str, Any]) -> web.Response:
    """The HTTP answer API Gateway makes of a proxy integration's result."""
    return web.Response(
        status=int(result.get("statusCode", 502)),
        body=result_body(result),
        headers=result_headers(result),
    )
