"""Verifying the auth service's access tokens inside a Lambda (no event loop, no aiohttp).

Keys come from PEM files (``URR_ACCESS_TRUST__PUBLIC_KEY_FILES``) and/or the auth service's JWKS
(``URR_ACCESS_TRUST__JWKS_URL``), fetched with ``urllib`` and cached for the container's life;
an unknown ``kid`` triggers at most one refetch per ``refetch_interval_s``.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from dataclasses import dataclass
from typing import Any

from urr_common.settings import TrustedKeysSettings
from urr_common.tokens import (
    KeyMaterialError,
    KeySet,
    TokenError,
    TokenRejection,
    TokenVerifier,
    load_verification_keys,
    parse_jws,
)

ACCESS_REQUIRED_CLAIMS = ("iss", "aud", "exp", "iat", "sub", "role")
_MAX_JWKS_BYTES = 64 * 1024


@dataclass(frozen=True)
class AccessIdentity:
    user_id: str
    role: str


class AccessVerifier:
    """Checks access tokens; thread-safe (the local API emulator calls from worker threads)."""

    def __init__(
        self,
        settings: TrustedKeysSettings,
        *,
        fetch_timeout_s: float = 1.0,
        refetch_interval_s: float = 30.0,
    ) -> None:
        self._settings = settings
        self._static = load_verification_keys(settings.public_key_files)
        self._keys = KeySet(self._static)
        self._fetch_timeout_s = fetch_timeout_s
        self._refetch_interval_s = refetch_interval_s
        self._fetched_at = float("-inf")
        self._lock = threading.Lock()

    def verify(self, token: str) -> AccessIdentity:
        parsed = parse_jws(token)
        if parsed.kid not in self._keys:
            self._refresh()
        claims = TokenVerifier(
            self._keys,
            issuer=self._settings.issuer,
            audience=self._settings.audience,
            leeway_s=self._settings.leeway_s,
            required_claims=ACCESS_REQUIRED_CLAIMS,
        ).verify_parsed(parsed)
        role = claims.get("role")
        if not isinstance(role, str):
            raise TokenError(TokenRejection.MISSING_CLAIM, "role must be a string")
        return AccessIdentity(user_id=str(claims["sub"]), role=role)

    def _refresh(self) -> None:
        url = self._settings.jwks_url
        if not url:
            return
        with self._lock:
            now = time.monotonic()
            if now - self._fetched_at < self._refetch_interval_s:
                return
            self._fetched_at = now
            try:
                fetched = KeySet.from_jwks(_fetch_json(url, self._fetch_timeout_s))
            except (OSError, ValueError, KeyMaterialError):
                # The auth service is down or answered nonsense: keep the keys we have; the
                # token then fails as "unknown key" (401), never as a 500.
                return
            self._keys = KeySet([*self._static, *fetched])


def _fetch_json(url: str, timeout_s: float) -> Any:
    if not url.startswith(("http://", "https://")):
        raise ValueError("the JWKS URL must be http(s)")
    request = urllib.request.Request(url, headers={"Accept": "application/json"})  # noqa: S310
    with urllib.request.urlopen(request, timeout=timeout_s) as response:  # noqa: S310
        return json.loads(response.read(_MAX_JWKS_BYTES + 1)[:_MAX_JWKS_BYTES])
