"""``python -m urr_gateway.identity_key``: make the gateway's identity key before anyone starts.

Upstreams verify the gateway's identity assertions with its public key, so the key must exist
before they start (docker-compose runs this as the one-shot ``provision-identity``). Creates
the private key at ``URR_IDENTITY__PRIVATE_KEY_FILE`` when missing (mode 0600) and writes its
public half to ``<folder of the key>/public/<URR_IDENTITY__KEY_ID>.pem``, the file upstreams
list in ``URR_IDENTITY__PUBLIC_KEY_FILES``. Running it again changes nothing.
"""

from __future__ import annotations

import sys
from pathlib import Path

from urr_common.settings import SettingsError, load_settings
from urr_common.tokens import load_or_create_signing_key
from urr_gateway.settings import GatewaySettings


def ensure_identity_key(private_key_file: Path, key_id: str) -> Path:
    """The key (made when missing) and its public half beside it; the public file's path."""
    key = load_or_create_signing_key(private_key_file, key_id)
    public = private_key_file.parent / "public" / f"{key_id}.pem"
    pem = key.verification_key().to_pem()
    if not public.is_file() or public.read_bytes() != pem:
        public.parent.mkdir(parents=True, exist_ok=True)
        staging = public.with_name(f".{public.name}.new")
        staging.write_bytes(pem)
        staging.replace(public)
    return public


def main() -> None:
    try:
        settings = load_settings(GatewaySettings)
    except SettingsError as exc:
        print(exc, file=sys.stderr)
        raise SystemExit(2) from exc
    identity = settings.identity
    public = ensure_identity_key(identity.private_key_file, identity.key_id)
    print(f"identity key {identity.key_id!r}: private {identity.private_key_file}, public {public}")


if __name__ == "__main__":
    main()
