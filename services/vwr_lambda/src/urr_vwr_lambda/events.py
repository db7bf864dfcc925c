"""Shape checks of raw API Gateway events before powertools reads them.

API Gateway always sends well-formed events; these checks make sure a malformed one (a test,
a misconfigured integration, a fuzzer) becomes a 400 problem rather than an exception deep in
event parsing.
"""

from __future__ import annotations

from itertools import chain, repeat
from typing import Any

from urr_vwr_lambda.problem import VwrProblem

_MAX_PATH = 2048


def _str_map(value: Any) -> bool:
    """None, or a dict of strings to strings. ``str.join`` checks every key and every value is
    a string (or a subclass) in C and raises ``TypeError`` at the first that is not: the same
    answer as an ``isinstance`` per item, without a Python-level loop over the headers."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    try:
        "".join(value)
        "".join(value.values())
    except TypeError:
        return False
    return True


def _multi_map(value: Any) -> bool:
    """None, or a dict of strings to lists of strings (checked as ``_str_map`` does)."""
    if value is None:
        return True
    if not isinstance(value, dict):
        return False
    lists = value.values()
    if not all(map(isinstance, lists, repeat(list))):
        return False
    try:
        "".join(value)
        "".join(chain.from_iterable(lists))
    except TypeError:
        return False
    return True


def event_shape_problem(event: Any, *, v2: bool) -> VwrProblem | None:
    """None when ``event`` is a usable proxy event, else the problem to answer with."""
    if not isinstance(event, dict) or not _common_shape(event):
        return _BAD
    path = event.get("rawPath") if v2 else event.get("path")
    shaped = _v2_shape(event) if v2 else _v1_shape(event)
    if not shaped or not isinstance(path, str) or not path.startswith("/") or len(path) > _MAX_PATH:
        return _BAD
    return None


_BAD = VwrProblem(400, "bad_event", "not an API Gateway proxy event")


def _common_shape(event: dict[str, Any]) -> bool:
    body = event.get("body")
    context = event.get("requestContext")
    return (
        (body is None or isinstance(body, str))
        and isinstance(event.get("isBase64Encoded", False), bool | None)
        and (context is None or isinstance(context, dict))
        and all(
            _str_map(event.get(name))
            for name in ("headers", "queryStringParameters", "pathParameters", "stageVariables")
        )
    )


def _v1_shape(event: dict[str, Any]) -> bool:
    return (
        isinstance(event.get("httpMethod"), str)
        and _multi_map(event.get("multiValueHeaders"))
        and _multi_map(event.get("multiValueQueryStringParameters"))
    )


def _v2_shape(event: dict[str, Any]) -> bool:
    http = (event.get("requestContext") or {}).get("http")
    cookies = event.get("cookies")
    return (
        isinstance(http, dict)
        and isinstance(http.get("method"), str)
        and isinstance(event.get("rawQueryString", ""), str)
        and (
            cookies is None
            or (isinstance(cookies, list) and all(isinstance(c, str) for c in cookies))
        )
    )
