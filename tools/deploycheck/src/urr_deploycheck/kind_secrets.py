"""The Secrets a local kind cluster needs, with fresh keys: printed as manifests for
``kubectl apply`` (nothing secret is ever committed).

    uv run urr-kind-secrets | kubectl apply -n urr -f -

In AWS the same Secrets come from Secrets Manager (External Secrets); see docs/runbook.md.
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
from collections.abc import Sequence
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization

from urr_common.tokens import SigningKey

#: Secret names and keys the manifests mount (k8s/base).
ACCESS_SECRET = "urr-access-signing-key"  # noqa: S105 - a Secret's name
ENTRY_SECRET = "urr-entry-signing-key"  # noqa: S105 - a Secret's name
VWR_PUBLIC_SECRET = "urr-vwr-public-keys"  # noqa: S105 - a Secret's name
LOG_SECRET = "urr-log-signing-key"  # noqa: S105 - a Secret's name
ADMISSION_LOG_SECRET = "urr-admission-log"  # noqa: S105 - a Secret's name
#: The gateway signs identity assertions with this key; upstreams trust its public half.
GATEWAY_IDENTITY_SECRET = "urr-gateway-identity-key"  # noqa: S105 - a Secret's name
GATEWAY_IDENTITY_PUBLIC_SECRET = "urr-gateway-identity-public-keys"  # noqa: S105 - a name
#: The ticket pods' credential at the queue's internal listener, and the queue's caller list.
QUEUE_CALLERS_SECRET = "urr-queue-internal-callers"  # noqa: S105 - a Secret's name


def _secret(name: str, data: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "urr"}},
        "type": "Opaque",
        "data": {key: base64.b64encode(value).decode("ascii") for key, value in data.items()},
    }


def signing_secret(name: str, kid: str) -> dict[str, Any]:
    key = SigningKey.generate(kid)
    return _secret(name, {"signing.pem": key.to_pem(), "kid": kid.encode()})


def public_keys_secret(name: str, keys: Sequence[SigningKey]) -> dict[str, Any]:
    """Public halves as ``<kid>.pem`` (verifiers take the kid from the file name)."""
    return _secret(
        name,
        {
            f"{key.kid}.pem": key.private_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for key in keys
        },
    )


def manifests(kid: str) -> list[dict[str, Any]]:
    # Tier 1 does not run in kind; the queue still mounts a key set to trust.
    vwr = SigningKey.generate(kid)
    identity = SigningKey.generate(kid)
    ticket_secret = secrets.token_hex(32)
    return [
        signing_secret(ACCESS_SECRET, kid),
        signing_secret(ENTRY_SECRET, kid),
        public_keys_secret(VWR_PUBLIC_SECRET, [vwr]),
        signing_secret(LOG_SECRET, kid),
        # The admission log's HMAC key for holder ids.
        _secret(ADMISSION_LOG_SECRET, {"holder-secret": secrets.token_urlsafe(32).encode()}),
        _secret(GATEWAY_IDENTITY_SECRET, {"signing.pem": identity.to_pem(), "kid": kid.encode()}),
        public_keys_secret(GATEWAY_IDENTITY_PUBLIC_SECRET, [identity]),
        _secret(
            QUEUE_CALLERS_SECRET,
            {
                "caller": b"ticket",
                "ticket": ticket_secret.encode(),
                "callers.json": json.dumps({"ticket": ticket_secret}).encode(),
            },
        ),
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the kind overlay's Secrets.")
    parser.add_argument("--kid", default="kind-1", help="key id of the generated keys")
    args = parser.parse_args(argv)
    print(yaml.safe_dump_all(manifests(args.kid), sort_keys=False), end="")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
