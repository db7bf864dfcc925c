"""RFC 9457 problem details, the one error shape every URR service answers with.

Error tree::

    ProblemError            any error a client should see as a problem+json answer
      BadRequest            400 malformed input
      Unauthorized          401 missing or bad credentials
      Forbidden             403 authenticated but not allowed
      NotFound              404
      Conflict              409 the request clashes with current state
      PayloadTooLarge       413
      UnsupportedMediaType  415
      Unprocessable         422 well-formed but invalid fields
      TooManyRequests       429
      ServiceUnavailable    503

Each carries a stable ``code`` clients may branch on; ``title`` is for people.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

PROBLEM_CONTENT_TYPE = "application/problem+json"
#: Problem types are URNs under our own namespace: stable, and never dereferenced.
PROBLEM_TYPE_PREFIX = "urn:urr:problem:"


@dataclass(frozen=True)
class Problem:
    """One problem document; ``extensions`` become extra top-level members."""

    status: int
    code: str
    title: str
    detail: str = ""
    instance: str | None = None
    extensions: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": PROBLEM_TYPE_PREFIX + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
            "code": self.code,
        }
        if self.instance:
            body["instance"] = self.instance
        for key, value in self.extensions.items():
            body.setdefault(key, value)
        return body


def problem_response(problem: Problem, *, headers: Mapping[str, str] | None = None) -> web.Response:
    """Render ``problem`` as an ``application/problem+json`` response."""
    return web.Response(
        status=problem.status,
        body=orjson.dumps(problem.to_dict()),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


class ProblemError(Exception):
    """Raise anywhere in a handler; the problem middleware renders it."""

    status: int = 500
    default_code: str = "internal_error"

    def __init__(
        self,
        detail: str = "",
        *,
        code: str | None = None,
        title: str | None = None,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or code or self.default_code)
        self.code = code or self.default_code
        self.title = title or HTTPStatus(self.status).phrase
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    def to_problem(self, instance: str | None = None) -> Problem:
        return Problem(
            status=self.status,
            code=self.code,
            title=self.title,
            detail=self.detail,
            instance=instance,
            extensions=self.extensions,
        )


class BadRequest(ProblemError):
    status = 400
    default_code = "bad_request"


class Unauthorized(ProblemError):
    status = 401
    default_code = "unauthorized"


class Forbidden(ProblemError):
    status = 403
    default_code = "forbidden"


class NotFound(ProblemError):
    status = 404
    default_code = "not_found"


class MethodNotAllowed(ProblemError):
    """Give the ``Allow`` header in ``headers``."""

    status = 405
    default_code = "method_not_allowed"


class Conflict(ProblemError):
    status = 409
    default_code = "conflict"


class PayloadTooLarge(ProblemError):
    status = 413
    default_code = "payload_too_large"


class UnsupportedMediaType(ProblemError):
    status = 415
    default_code = "unsupported_media_type"


class Unprocessable(ProblemError):
    status = 422
    default_code = "validation_failed"


class TooManyRequests(ProblemError):
    status = 429
    default_code = "rate_limited"


class ServiceUnavailable(ProblemError):
    status = 503
    default_code = "unavailable"


#: Codes for aiohttp's own HTTP errors (routing, methods, body size), so they share our shape.
_HTTP_EXCEPTION_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    408: "request_timeout",
    409: "conflict",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    422: "validation_failed",
    429: "rate_limited",
    431: "headers_too_large",
}


def problem_from_http_exception(exc: web.HTTPException, instance: str | None) -> Problem:
    """Map an aiohttp ``HTTPException`` (4xx/5xx) to a problem document."""
    status = exc.status
    code = _HTTP_EXCEPTION_CODES.get(status, "internal_error" if status >= 500 else "http_error")
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = exc.reason
    detail = exc.text if exc.text and not exc.text.startswith(f"{status}:") else title
    return Problem(status=status, code=code, title=title, detail=detail, instance=instance)
