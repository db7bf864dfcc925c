"""Only requests that came through the CloudFront distribution reach the API (issue 15, 3b).

CloudFront adds a custom origin header whose value is a Secrets Manager secret; the API refuses
any public request without it with ``403 origin_forbidden``. The secret rotates without
downtime: while a rotation runs, both the ``AWSCURRENT`` and the ``AWSPENDING`` value are
accepted (see the README for the order of steps). A container keeps the values it fetched for
``cache_s`` seconds; when Secrets Manager does not answer, it keeps using the values it has,
and with none at all it answers ``503`` (never lets a request through unchecked).

Admin routes are not checked here: in AWS they are IAM-signed straight to API Gateway (a
signature covers the ``Host`` header, so they cannot pass through the distribution), and
locally they carry an admin access token.
"""

from __future__ import annotations

import hmac
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from urr_vwr_lambda.problem import VwrProblem

#: A shorter secret is treated as misconfigured and never accepted.
MIN_SECRET_CHARS = 32
#: The stages whose values are accepted: the live one and, during a rotation, the next one.
ACCEPTED_STAGES = ("AWSCURRENT", "AWSPENDING")
ADMIN_PREFIX = "/vwr/admin/"


class OriginSecrets:
    """The accepted header values, fetched from Secrets Manager and kept ``cache_s`` seconds."""

    def __init__(
        self,
        client: Any,
        secret_id: str,
        *,
        cache_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._secret_id = secret_id
        self._cache_s = cache_s
        self._clock = clock
        self._lock = threading.Lock()
        self._values: tuple[str, ...] = ()
        self._fetched_at: float | None = None

    def cached(self) -> tuple[str, ...] | None:
        """The values while they are fresh, without any call (None: ``values`` must fetch)."""
        fetched_at = self._fetched_at
        if fetched_at is None or self._clock() - fetched_at >= self._cache_s:
            return None
        return self._values or None

    def values(self) -> tuple[str, ...]:
        with self._lock:
            now = self._clock()
            if self._fetched_at is None or now - self._fetched_at >= self._cache_s:
                try:
                    self._values = self._fetch()
                    self._fetched_at = now
                except (ClientError, BotoCoreError):
                    if not self._values:
                        raise
                    # Secrets Manager is unreachable: the values we have stay good a while.
                    self._fetched_at = now
            return self._values

    def _fetch(self) -> tuple[str, ...]:
        found: list[str] = []
        for stage in ACCEPTED_STAGES:
            try:
                answer = self._client.get_secret_value(SecretId=self._secret_id, VersionStage=stage)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code", "")
                if stage != "AWSCURRENT" and code == "ResourceNotFoundException":
                    continue  # no rotation under way
                raise
            value = answer.get("SecretString")
            if isinstance(value, str) and len(value) >= MIN_SECRET_CHARS and value not in found:
                found.append(value)
        return tuple(found)


def header_value(headers: Mapping[str, Any] | None, name: str) -> str | None:
    """A header of a proxy event by case-insensitive name."""
    if not isinstance(headers, Mapping):
        return None
    wanted = name.lower()
    for key, value in headers.items():
        if isinstance(key, str) and key.lower() == wanted and isinstance(value, str):
            return value
    return None


def event_path(event: Mapping[str, Any]) -> str:
    path = event.get("path") or event.get("rawPath") or ""
    return path if isinstance(path, str) else ""


def matches(presented: str | None, accepted: tuple[str, ...]) -> bool:
    """Whether ``presented`` is one of the accepted values (compared in constant time)."""
    if not presented:
        return False
    given = presented.encode("utf-8", "surrogatepass")
    hit = False
    for value in accepted:
        hit |= hmac.compare_digest(given, value.encode())
    return hit


def origin_problem(
    secrets: OriginSecrets | None, header: str, event: Mapping[str, Any]
) -> VwrProblem | None:
    """Why this request may not be answered (None: it came through the distribution).

    ``secrets`` None means the check is off (no secret configured).
    """
    if secrets is None or event_path(event).startswith(ADMIN_PREFIX):
        return None
    try:
        accepted = secrets.values()
    except (ClientError, BotoCoreError):
        return VwrProblem(
            503,
            "origin_check_unavailable",
            "the origin check could not read its secret; try again shortly",
            headers={"Retry-After": "5"},
        )
    if matches(header_value(event.get("headers"), header), accepted):
        return None
    return VwrProblem(
        403, "origin_forbidden", "this API answers only requests made through the site"
    )


def came_through_distribution(
    secrets: OriginSecrets | None, header: str, event: Mapping[str, Any]
) -> bool:
    """True when the request carries a valid origin header (so CloudFront's headers are its)."""
    if secrets is None:
        return False
    try:
        accepted = secrets.values()
    except (ClientError, BotoCoreError):
        return False
    return matches(header_value(event.get("headers"), header), accepted)
