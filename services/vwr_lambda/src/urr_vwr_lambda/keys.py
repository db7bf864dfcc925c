"""Where the Tier-1 signing key comes from: a local PEM file, or Secrets Manager in AWS."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from urr_common.tokens import SigningKey, VerificationKey, load_or_create_signing_key
from urr_vwr_lambda.settings import VwrTokenSettings

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager import SecretsManagerClient


class SigningKeyUnavailable(RuntimeError):
    """No signing key could be loaded (missing file outside local runs, bad secret)."""


def public_key_path(private_key_file: Path, kid: str) -> Path:
    return private_key_file.parent / "public" / f"{kid}.pem"


def load_signing_key(
    settings: VwrTokenSettings,
    *,
    create_missing: bool,
    secrets: SecretsManagerClient | None = None,
) -> SigningKey:
    """The private key, from the secret when one is named, else from the PEM file."""
    if settings.private_key_secret_id:
        if secrets is None:
            raise SigningKeyUnavailable("a secret id is set but no Secrets Manager client")
        secret = secrets.get_secret_value(SecretId=settings.private_key_secret_id)
        pem = secret.get("SecretString")
        if not pem:
            raise SigningKeyUnavailable("the signing-key secret holds no PEM string")
        return SigningKey.from_pem(pem.encode(), settings.key_id)
    path = settings.private_key_file
    if not path.exists() and not create_missing:
        raise SigningKeyUnavailable(f"no signing key at {path}")
    key = load_or_create_signing_key(path, settings.key_id)
    publish_public_key(key.verification_key(), public_key_path(path, settings.key_id))
    return key


def ensure_local_keys(settings: VwrTokenSettings) -> SigningKey:
    """Create the local key pair when missing (``make up`` and tests)."""
    return load_signing_key(settings, create_missing=True)


def publish_public_key(key: VerificationKey, path: Path) -> None:
    """Write the public PEM at ``path`` if it is missing or different (atomic rename)."""
    pem = key.to_pem()
    if path.exists() and path.read_bytes() == pem:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    temporary.write_bytes(pem)
    temporary.replace(path)
