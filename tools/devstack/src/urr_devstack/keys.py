"""Local signing keys and the local admin password, made on first start and kept in ``.urr/``.

Layout (the brief's token conventions): ``keys/<access|entry|vwr>/<kid>.pem`` is the private
key (0600) and ``keys/<...>/public/<kid>.pem`` its public half, which verifiers may read.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from urr_common.tokens import load_or_create_signing_key

#: access: auth signs users' access tokens; entry: the queue signs Tier-2 entry tokens;
#: vwr: the waiting-room Lambda signs Tier-1 tokens; log: the admission log signs tree heads;
#: identity: the gateway signs the identity assertions upstreams verify (``X-Urr-Identity``).
KEY_KINDS = ("access", "entry", "vwr", "log", "identity")
LOCAL_KEY_ID = "local-1"


@dataclass(frozen=True)
class LocalKey:
    kind: str
    key_id: str
    private_file: Path
    public_file: Path


def ensure_signing_keys(keys_dir: Path, key_id: str = LOCAL_KEY_ID) -> dict[str, LocalKey]:
    """One key pair per kind under ``keys_dir``; existing keys are kept as they are."""
    keys_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(keys_dir, 0o700)
    made = {}
    for kind in KEY_KINDS:
        private_file = keys_dir / kind / f"{key_id}.pem"
        public_file = keys_dir / kind / "public" / f"{key_id}.pem"
        signing_key = load_or_create_signing_key(private_file, key_id)
        public_pem = signing_key.verification_key().to_pem()
        # Rewritten when missing or stale (a private key replaced by hand).
        if not public_file.exists() or public_file.read_bytes() != public_pem:
            _write_atomically(public_file, public_pem, mode=0o644)
        made[kind] = LocalKey(kind, key_id, private_file, public_file)
    return made


ADMIN_EMAIL_VARIABLE = "URR_BOOTSTRAP_ADMIN_EMAIL"
ADMIN_PASSWORD_VARIABLE = "URR_BOOTSTRAP_ADMIN_PASSWORD"  # noqa: S105 - a variable's name


class AdminSettingsError(ValueError):
    """Only one of the two bootstrap admin variables is set."""


def chosen_admin(environ: Mapping[str, str]) -> tuple[str, str] | None:
    """The admin the user asked for with the auth service's own two variables, if any.

    Both or neither, as the auth service itself requires; neither means the stack's own
    admin (``admin_email`` with a password generated once into the state folder).
    """
    email = environ.get(ADMIN_EMAIL_VARIABLE, "").strip()
    password = environ.get(ADMIN_PASSWORD_VARIABLE, "")
    if email and password:
        return email, password
    if email or password:
        missing = ADMIN_PASSWORD_VARIABLE if email else ADMIN_EMAIL_VARIABLE
        raise AdminSettingsError(
            f"{missing} is not set: set both {ADMIN_EMAIL_VARIABLE} and "
            f"{ADMIN_PASSWORD_VARIABLE}, or neither for a generated local admin"
        )
    return None


def ensure_admin_password(path: Path) -> str:
    """The local admin's password: generated once (0600), then read back on every start."""
    if path.exists():
        password = path.read_text().strip()
        if password:
            return password
    password = secrets.token_urlsafe(18)
    _write_atomically(path, (password + "\n").encode(), mode=0o600)
    return password


def ensure_service_secret(path: Path) -> str:
    """A service credential (one caller at one internal listener): 256 random bits, made
    once (0600) and read back on every start."""
    if path.exists():
        secret = path.read_text().strip()
        if secret:
            return secret
    secret = secrets.token_hex(32)
    _write_atomically(path, (secret + "\n").encode(), mode=0o600)
    return secret


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
