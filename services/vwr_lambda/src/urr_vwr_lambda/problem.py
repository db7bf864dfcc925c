"""RFC 9457 problem answers for the Lambda handlers (same shape as ``urr_common.problems``).

Kept apart from ``urr_common.problems`` because that module imports aiohttp, which a Lambda
would pay for at every cold start.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

PROBLEM_CONTENT_TYPE = "application/problem+json"
PROBLEM_TYPE_PREFIX = "urn:urr:problem:"


class VwrProblem(Exception):
    """Raised by handlers; rendered as problem+json with a stable ``code``."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions

    def body(self, instance: str | None = None) -> dict[str, Any]:
        return problem_body(self.status, self.code, self.detail, instance, **self.extensions)


def problem_body(
    status: int, code: str, detail: str, instance: str | None = None, **extensions: Any
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_PREFIX + code,
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": detail,
        "code": code,
    }
    if instance:
        body["instance"] = instance
    for key, value in extensions.items():
        body.setdefault(key, value)
    return body


def bad_request(detail: str, code: str = "bad_request") -> VwrProblem:
    return VwrProblem(400, code, detail)


def not_found(detail: str, code: str = "not_found") -> VwrProblem:
    return VwrProblem(404, code, detail)
