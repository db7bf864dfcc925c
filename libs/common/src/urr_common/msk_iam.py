"""MSK IAM authentication for aiokafka: SASL/OAUTHBEARER with a SigV4-signed token.

MSK's IAM listener (port 9098) accepts, as the OAUTHBEARER token, a presigned
``kafka-cluster:Connect`` request signed with the caller's AWS credentials (IRSA in EKS).
``aws-msk-iam-sasl-signer-python`` builds that token; this adapter hands it to aiokafka,
signing off the event loop (botocore may fetch credentials over the network) and reusing a
token until shortly before it expires.
"""

from __future__ import annotations

import asyncio
import time

from aiokafka.abc import AbstractTokenProvider

#: A token is replaced this long before it expires, so a connection never presents a stale one.
REFRESH_MARGIN_S = 60.0


class MskIamTokenProvider(AbstractTokenProvider):  # type: ignore[misc]
    def __init__(self, region: str) -> None:
        self.region = region
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None

    async def token(self) -> str:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # several connections authenticating at once sign once
            token = self._token
            if token is None or time.time() >= self._expires_at - REFRESH_MARGIN_S:
                fresh, self._expires_at = await asyncio.to_thread(self._sign)
                self._token = token = fresh
            return token

    def _sign(self) -> tuple[str, float]:
        from aws_msk_iam_sasl_signer import MSKAuthTokenProvider  # type: ignore[import-untyped]

        token, expiry_ms = MSKAuthTokenProvider.generate_auth_token(self.region)
        return str(token), float(expiry_ms) / 1000.0
