"""AWS Signature Version 4 for the lean DynamoDB clients' requests (issue 22 item 3): the
Tier-1 handlers' (``urr_vwr_lambda.dynamodb``) and the queue's spent-place marks
(``urr_queue.tier1_marks``).

botocore's ``SigV4Auth`` costs about as much as the rest of a lean DynamoDB call: per request
it builds header objects (``email.message``), splits the URL three times, normalises the
path, logs three debug lines and derives the signing key with four HMACs before the fifth
that signs. The requests the lean client sends have one shape (``POST /``, no query, a JSON
body, a handful of headers), and the signing key depends only on the secret key, the day, the
region and the service, so this signer:

* derives ``kSigning`` once per (secret key, day) and keeps it (one HMAC per request);
* builds the canonical request for ``POST /`` directly, with botocore's rules for the headers
  (names lower-cased and sorted, values trimmed with inner runs of spaces collapsed, the
  values of one name joined by commas, ``Expect``/``Transfer-Encoding``/``User-Agent``/
  ``X-Amzn-Trace-Id`` not signed, ``host`` added from the endpoint when absent) and the body's
  SHA-256 always signed (as botocore does for a request without a payload-signing context).

It produces the same ``Authorization`` header as botocore's ``SigV4Auth`` for the same
request, credentials and time (tested byte for byte, over fuzzed inputs, and against AWS's
published test vectors).
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any, NamedTuple

ALGORITHM = "AWS4-HMAC-SHA256"

#: Headers botocore leaves out of the signature (``botocore.auth.SIGNED_HEADERS_BLACKLIST``).
UNSIGNED_HEADERS = frozenset({"expect", "transfer-encoding", "user-agent", "x-amzn-trace-id"})


class Credentials(NamedTuple):
    """What a request is signed with (botocore's ``ReadOnlyCredentials`` has the same fields)."""

    access_key: str
    secret_key: str
    token: str | None


def host_header(host: str, port: int, *, https: bool) -> str:
    """The ``host`` value a client sends and signs: lower-case, the port only when it is not
    the scheme's default, an IPv6 address in brackets (``http.client`` sends the same)."""
    host = host.lower()
    if ":" in host:
        host = f"[{host}]"
    if port != (443 if https else 80):
        host = f"{host}:{port}"
    return host


def amz_date(now: float) -> str:
    """SigV4's timestamp (``YYYYMMDDTHHMMSSZ``, UTC) of a Unix time."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))


def _hmac(key: bytes, message: str) -> bytes:
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def _trim(value: str) -> str:
    # SigV4's Trimall: leading and trailing white space dropped, inner runs made one space.
    return " ".join(value.split())


class SigV4Signer:
    """Signs ``POST /`` requests to one endpoint for one region and service."""

    def __init__(self, *, region: str, service: str, host: str) -> None:
        self._region = region
        self._service = service
        self._host = host
        self._scope_tail = f"/{region}/{service}/aws4_request"
        # (secret key, day) -> kSigning; one entry: a new day or new keys replace it.
        self._key: tuple[str, str, bytes] | None = None

    def signing_key(self, secret_key: str, day: str) -> bytes:
        """``kSigning`` for ``day`` (``YYYYMMDD``), derived once per secret key and day."""
        cached = self._key
        if cached is not None and cached[0] == secret_key and cached[1] == day:
            return cached[2]
        key = _hmac(f"AWS4{secret_key}".encode(), day)
        for part in (self._region, self._service, "aws4_request"):
            key = _hmac(key, part)
        # One tuple assignment: another thread sees the old entry or the new one, both valid.
        self._key = (secret_key, day, key)
        return key

    def sign(
        self,
        headers: dict[str, str],
        body: bytes,
        credentials: Credentials | Any,
        *,
        now: float | None = None,
    ) -> dict[str, str]:
        """Add ``X-Amz-Date``, ``X-Amz-Security-Token`` (with a session token) and
        ``Authorization`` to ``headers`` (which must hold none of them, nor ``Date``) for a
        ``POST /`` with ``body``; answers ``headers``."""
        stamp = amz_date(time.time() if now is None else now)
        headers["X-Amz-Date"] = stamp
        token = credentials.token
        if token:
            headers["X-Amz-Security-Token"] = token
        signed, canonical_headers = self._canonical_headers(headers)
        canonical = (
            f"POST\n/\n\n{canonical_headers}\n\n{signed}\n{hashlib.sha256(body).hexdigest()}"
        )
        day = stamp[:8]
        string_to_sign = (
            f"{ALGORITHM}\n{stamp}\n{day}{self._scope_tail}\n"
            f"{hashlib.sha256(canonical.encode('utf-8')).hexdigest()}"
        )
        signature = hmac.new(
            self.signing_key(credentials.secret_key, day),
            string_to_sign.encode("utf-8"),
            hashlib.sha256,
        ).hexdigest()
        headers["Authorization"] = (
            f"{ALGORITHM} Credential={credentials.access_key}/{day}{self._scope_tail}, "
            f"SignedHeaders={signed}, Signature={signature}"
        )
        return headers

    def _canonical_headers(self, headers: Mapping[str, str]) -> tuple[str, str]:
        """(signed header names, canonical header lines) of ``headers``."""
        values: dict[str, list[str]] = {}
        for name, value in headers.items():
            lower = name.lower()
            if lower not in UNSIGNED_HEADERS:
                values.setdefault(lower, []).append(value)
        if "host" not in values:
            values["host"] = [self._host]
        names = sorted(values)
        lines = "\n".join(f"{n}:{','.join(_trim(v) for v in values[n])}" for n in names)
        return ";".join(names), lines
