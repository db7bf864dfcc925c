"""Edge verifier: the CloudFront viewer-request function (Lambda@Edge, Python).

For an event whose waiting room is active, a page ``/events/{eventId}...`` without a valid
``urr-vwr-token`` for that event is redirected (302) to ``/vwr/{eventId}?return=<path>``; an API
``/api/v1/{queue,seats,reservations}/{eventId}...`` gets a 403 problem naming the same location.
Everything else (``/api/v1/auth/*``, the waiting page ``/vwr/*`` and its API ``/vwr-api/*``,
health, other events) passes untouched. No environment: keys and the active-event list come from
the document in ``edge_config``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from http.cookies import CookieError, SimpleCookie
from typing import Any

from urr_common.tokens import TokenError, TokenRejection
from urr_vwr_lambda import tier1
from urr_vwr_lambda.edge_config import EdgeConfigSource, bundled_location
from urr_vwr_lambda.paths import (
    PathKind,
    UnsafePath,
    classify,
    normalise_path,
    waiting_room_location,
)
from urr_vwr_lambda.problem import PROBLEM_CONTENT_TYPE, problem_body

TOKEN_COOKIE = "urr-vwr-token"  # noqa: S105 - a cookie name
_MAX_COOKIE_HEADER = 16 * 1024
_UNGATED_PREFIXES = ("/vwr/", "/vwr-api/", "/api/v1/auth/", "/health")
#: Admitted tokens an edge container remembers (a flood of new ones empties it, no more).
_ADMITTED_LIMIT = 4096


class AdmittedTokens:
    """Tokens this container has already verified as admitting to an event, until they expire.

    An admitted visitor sends the same token with every request after Tier 1 (the event
    page, the queue's enter and status polls, the seat map, hold, reservation, leave): its
    ES256 verification was ~8 % of the edge's CPU in a flash crowd, for an answer that
    cannot change before ``exp`` under the same document. Only admissions are remembered
    (a refused token is verified again, so its reason stays exact); a new document (another
    key set, leeway or event list) forgets them all, so a withdrawn key stops its tokens at
    once, as before.
    """

    def __init__(self, clock: Callable[[], float] = time.time, limit: int = _ADMITTED_LIMIT):
        self._clock = clock
        self._limit = limit
        self._config: Any = None
        #: (token, event id) -> the last moment it still admits (``exp`` + leeway, as PyJWT).
        self._until: dict[tuple[str, str], float] = {}

    def admits(self, config: Any, token: str, event_id: str) -> bool | None:
        """True: remembered and still valid; False: remembered but expired now; None: not
        remembered (verify it)."""
        if config is not self._config:
            self._config = config
            self._until.clear()
            return None
        until = self._until.get((token, event_id))
        if until is None:
            return None
        if self._clock() < until:
            return True
        self._until.pop((token, event_id), None)  # pop: two threads may both find it expired
        return False

    def remember(self, config: Any, token: str, event_id: str, expires_at: int) -> None:
        if config is not self._config:
            return
        if len(self._until) >= self._limit:
            self._until.clear()
        self._until[(token, event_id)] = expires_at + config.leeway_s


class EdgeVerifier:
    """Decides one viewer request: returns the request to forward, or a response."""

    def __init__(self, source: EdgeConfigSource, *, clock: Callable[[], float] = time.time) -> None:
        self.source = source
        self.admitted = AdmittedTokens(clock)

    def __call__(self, event: Any) -> dict[str, Any]:
        request = _cf_request(event)
        if request is None:
            return _problem(400, "bad_request", "not a CloudFront viewer-request event", "")
        uri = request.get("uri")
        if not isinstance(uri, str) or not uri.startswith("/"):
            return _problem(400, "bad_request", "the request has no path", "")
        try:
            # Normalise first: ``/vwr/../events/x`` must not pass as a waiting-page path.
            path = normalise_path(uri)
        except (UnsafePath, UnicodeDecodeError):
            return _problem(400, "bad_path", "the path cannot be normalised safely", "")
        if path == "/vwr" or path.startswith(_UNGATED_PREFIXES):
            return request
        gated = classify(path)
        if gated.kind is PathKind.PASS:
            return request
        config = self.source.get()
        event_id = config.active_event(gated.event_id)
        if event_id is None:
            return request
        reason = _token_rejection(config, request, event_id, self.admitted)
        if reason is None:
            return request
        query = request.get("querystring")
        location = waiting_room_location(event_id, path, query if isinstance(query, str) else "")
        if gated.kind is PathKind.PAGE:
            return _redirect(location)
        return _problem(
            403,
            f"vwr_token_{reason}",
            "this event has a waiting room: take a place at the location given",
            location,
        )


def _cf_request(event: Any) -> dict[str, Any] | None:
    try:
        request = event["Records"][0]["cf"]["request"]
    except (KeyError, IndexError, TypeError):
        return None
    return request if isinstance(request, dict) else None


def _cookie_values(request: dict[str, Any], name: str) -> list[str]:
    """Every value of cookie ``name`` across the Cookie headers (a browser may send several)."""
    headers = request.get("headers")
    entries = headers.get("cookie") if isinstance(headers, dict) else None
    values: list[str] = []
    if not isinstance(entries, list):
        return values
    for entry in entries:
        raw = entry.get("value") if isinstance(entry, dict) else None
        if not isinstance(raw, str) or len(raw) > _MAX_COOKIE_HEADER:
            continue
        for part in raw.split(";"):
            key, sep, value = part.strip().partition("=")
            if sep and key == name:
                values.append(_unquote_cookie(value.strip()))
    return values


def _unquote_cookie(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            parsed = SimpleCookie(f"x={value}")
        except CookieError:
            return value
        return parsed["x"].value if "x" in parsed else value
    return value


def _token_rejection(
    config: Any, request: dict[str, Any], event_id: str, admitted: AdmittedTokens
) -> str | None:
    """None when some ``urr-vwr-token`` admits to ``event_id``, else why not (for the code)."""
    tokens = _cookie_values(request, TOKEN_COOKIE)
    if not tokens:
        return "missing"
    reason = "invalid"
    for token in tokens[:4]:
        known = admitted.admits(config, token, event_id)
        if known is True:
            return None
        if known is False:
            if reason == "invalid":
                reason = "expired"
            continue
        try:
            admission = tier1.admission_of(config.verifier(), token, event_id)
        except tier1.WrongEvent:
            reason = "wrong_event"
        except TokenError as exc:
            if exc.reason is TokenRejection.EXPIRED and reason == "invalid":
                reason = "expired"
        else:
            admitted.remember(config, token, event_id, admission.expires_at)
            return None
    return reason


def _header(name: str, value: str) -> list[dict[str, str]]:
    return [{"key": name, "value": value}]


def _redirect(location: str) -> dict[str, Any]:
    return {
        "status": "302",
        "statusDescription": "Found",
        "headers": {
            "location": _header("Location", location),
            # Personal: depends on the viewer's cookie; never cache it at the edge.
            "cache-control": _header("Cache-Control", "no-store"),
        },
    }


def _problem(status: int, code: str, detail: str, location: str) -> dict[str, Any]:
    extensions = {"location": location} if location else {}
    body = problem_body(status, code, detail, **extensions)
    headers = {
        "content-type": _header("Content-Type", PROBLEM_CONTENT_TYPE),
        "cache-control": _header("Cache-Control", "no-store"),
    }
    if location:
        headers["location"] = _header("Location", location)
    return {
        "status": str(status),
        "statusDescription": "Forbidden" if status == 403 else "Bad Request",
        "headers": headers,
        "body": json.dumps(body),
    }


_VERIFIER: list[EdgeVerifier] = []


def handler(event: Any, context: Any) -> dict[str, Any]:
    """The Lambda@Edge entry point; the verifier is built on the first request of a container."""
    if not _VERIFIER:
        _VERIFIER.append(EdgeVerifier(EdgeConfigSource(bundled_location())))
    return _VERIFIER[0](event)
