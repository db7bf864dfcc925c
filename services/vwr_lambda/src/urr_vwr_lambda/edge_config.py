"""The small JSON document the edge verifier works from (Lambda@Edge has no environment).

::

    {"version": 1, "issuer": "urr-vwr", "audience": "urr-vwr", "leewaySeconds": 10,
     "maxAgeSeconds": 15, "activeEvents": ["evt-1"], "keys": {"keys": [<public JWKs>]}}

Published by the admin route (on every change) and by the advancer (every run) to a file
(locally ``.urr/vwr/edge-config.json``) or ``s3://bucket/key`` (AWS; served to the edge over
HTTPS). The edge function learns *where* from ``edge_location.json`` bundled at build time.
Keys are public; a new signing key is published before it signs (rotation).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from urr_common.tokens import KeyMaterialError, KeySet, TokenVerifier
from urr_vwr_lambda import tier1
from urr_vwr_lambda.ids import is_event_id

DOCUMENT_VERSION = 1
_MAX_DOCUMENT_BYTES = 256 * 1024


class EdgeConfigError(ValueError):
    """The document is unreadable or invalid."""


@dataclass(frozen=True)
class EdgeConfig:
    keys: KeySet
    active_events: frozenset[str]
    issuer: str = "urr-vwr"
    audience: str = "urr-vwr"
    leeway_s: int = 10
    max_age_s: int = 15
    #: Lower-cased event id -> canonical id, for case-insensitive matching of paths.
    _by_folded: dict[str, str] = field(default_factory=dict, compare=False, repr=False)
    _verifier: list[TokenVerifier] = field(default_factory=list, compare=False, repr=False)

    def __post_init__(self) -> None:
        self._by_folded.update({event.lower(): event for event in self.active_events})

    def active_event(self, candidate: str) -> str | None:
        """The canonical id of an active event named (in any case) by ``candidate``."""
        return self._by_folded.get(candidate.lower())

    def verifier(self) -> TokenVerifier:
        if not self._verifier:
            self._verifier.append(
                tier1.verifier(
                    self.keys, issuer=self.issuer, audience=self.audience, leeway_s=self.leeway_s
                )
            )
        return self._verifier[0]

    def to_document(self) -> dict[str, Any]:
        return {
            "version": DOCUMENT_VERSION,
            "issuer": self.issuer,
            "audience": self.audience,
            "leewaySeconds": self.leeway_s,
            "maxAgeSeconds": self.max_age_s,
            "activeEvents": sorted(self.active_events),
            "keys": self.keys.to_jwks(),
        }


EMPTY_CONFIG = EdgeConfig(keys=KeySet(), active_events=frozenset())


def parse_document(raw: bytes) -> EdgeConfig:
    if len(raw) > _MAX_DOCUMENT_BYTES:
        raise EdgeConfigError("the edge document is too large")
    try:
        document = json.loads(raw)
    except ValueError as exc:
        raise EdgeConfigError(f"the edge document is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("version") != DOCUMENT_VERSION:
        raise EdgeConfigError(f"the edge document must be an object of version {DOCUMENT_VERSION}")
    active = document.get("activeEvents")
    if not isinstance(active, list) or not all(is_event_id(e) for e in active):
        raise EdgeConfigError("activeEvents must be a list of event ids")
    try:
        keys = KeySet.from_jwks(document.get("keys"))  # type: ignore[arg-type]
    except KeyMaterialError as exc:
        raise EdgeConfigError(f"bad keys: {exc}") from exc
    issuer, audience = document.get("issuer"), document.get("audience")
    leeway, max_age = document.get("leewaySeconds", 10), document.get("maxAgeSeconds", 15)
    if not isinstance(issuer, str) or not isinstance(audience, str):
        raise EdgeConfigError("issuer and audience must be strings")
    if not isinstance(leeway, int) or not isinstance(max_age, int) or leeway < 0 or max_age < 1:
        raise EdgeConfigError("leewaySeconds and maxAgeSeconds must be positive integers")
    return EdgeConfig(
        keys=keys,
        active_events=frozenset(active),
        issuer=issuer,
        audience=audience,
        leeway_s=min(leeway, 300),
        max_age_s=min(max_age, 3600),
    )


def build_document(
    keys: KeySet, active_events: Iterable[str], *, max_age_s: int, issuer: str, audience: str
) -> bytes:
    config = EdgeConfig(
        keys=keys,
        active_events=frozenset(active_events),
        issuer=issuer,
        audience=audience,
        max_age_s=max_age_s,
    )
    return json.dumps(config.to_document(), sort_keys=True, separators=(",", ":")).encode()


class EdgeConfigSource:
    """The document at ``location`` (a path or an http(s) URL), cached for ``maxAgeSeconds``.

    A file is re-read only when its modification time changes. When a refresh fails, the last
    good document stays in use; before any document was ever read the room is treated as
    inactive everywhere (fail open: with no list of active events, sending people to a waiting
    page that answers "not active" would only loop them).
    """

    def __init__(
        self,
        location: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        fetch_timeout_s: float = 1.0,
        fallback: EdgeConfig = EMPTY_CONFIG,
    ) -> None:
        self.location = location
        self._clock = clock
        self._fetch_timeout_s = fetch_timeout_s
        self._config = fallback
        self._loaded = False
        self._checked_at = float("-inf")
        self._mtime_ns: int | None = None
        self._lock = threading.Lock()
        self.last_error: str | None = None

    def get(self) -> EdgeConfig:
        now = self._clock()
        if self._loaded and now - self._checked_at < self._refresh_interval():
            return self._config
        with self._lock:
            if not (self._loaded and now - self._checked_at < self._refresh_interval()):
                self._refresh(now)
        return self._config

    def _refresh_interval(self) -> float:
        # A local file is cheap to stat: look often so an admin change shows within a second.
        return 0.5 if not self._is_url() else float(self._config.max_age_s)

    def _is_url(self) -> bool:
        return self.location.startswith(("http://", "https://"))

    def _refresh(self, now: float) -> None:
        self._checked_at = now
        try:
            if self._is_url():
                raw = _fetch(self.location, self._fetch_timeout_s)
            else:
                path = Path(self.location)
                mtime = path.stat().st_mtime_ns
                if self._loaded and mtime == self._mtime_ns:
                    return
                raw = path.read_bytes()
                self._mtime_ns = mtime
            self._config = parse_document(raw)
            self._loaded = True
            self.last_error = None
        except (OSError, EdgeConfigError) as exc:
            self.last_error = f"{type(exc).__name__}: {exc}"


def _fetch(url: str, timeout_s: float) -> bytes:
    import urllib.request  # only URL sources need it; a file source skips ~40 ms of imports

    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        data: bytes = response.read(_MAX_DOCUMENT_BYTES + 1)
    return data


def bundled_location() -> str:
    """Where the deployed edge function reads its document: fixed in the bundle at build time."""
    raw = (resources.files("urr_vwr_lambda") / "edge_location.json").read_bytes()
    location = json.loads(raw).get("location")
    if not isinstance(location, str) or not location:
        raise EdgeConfigError("edge_location.json names no location")
    return location


class EdgeConfigPublisher:
    """Writes the document to a file or ``s3://bucket/key``, skipping unchanged content."""

    def __init__(
        self,
        target: str,
        *,
        s3_client: Callable[[], Any] | None = None,
        cache_control: str = "max-age=5",
    ) -> None:
        self.target = target
        self._s3_client = s3_client
        self._cache_control = cache_control
        self._last: bytes | None = None
        self._lock = threading.Lock()

    def publish(self, document: bytes) -> bool:
        with self._lock:
            if document == self._last:
                return False
            if self.target.startswith("s3://"):
                bucket, _, key = self.target.removeprefix("s3://").partition("/")
                if self._s3_client is None or not bucket or not key:
                    raise EdgeConfigError(f"cannot publish to {self.target}")
                self._s3_client().put_object(
                    Bucket=bucket,
                    Key=key,
                    Body=document,
                    ContentType="application/json",
                    CacheControl=self._cache_control,
                )
            else:
                _write_atomically(Path(self.target), document)
            self._last = document
            return True


def _write_atomically(path: Path, data: bytes) -> None:
    if path.exists() and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    temporary.write_bytes(data)
    temporary.replace(path)
