"""The kind Secrets: valid manifests, loadable keys, exactly what the kind overlay mounts."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import kubernetes_validate  # type: ignore[import-untyped]

from urr_admission_log.settings import LogOptions
from urr_common.tokens import SigningKey, load_verification_keys
from urr_common.upstream_security import (
    InternalListenerSettings,
    ServiceCredentialSettings,
    UpstreamIdentitySettings,
)
from urr_deploycheck.kind_secrets import main, manifests
from urr_deploycheck.manifests import pod_templates, render

REPO = Path(__file__).resolve().parents[3]


def _referenced_secrets() -> dict[str, set[str]]:
    """Secret name -> keys the kind overlay reads (volumes and env), optional refs excluded."""
    needed: dict[str, set[str]] = {}
    for pod in pod_templates(render(REPO / "k8s/overlays/kind")):
        for volume in pod.spec.get("volumes", []):
            secret = volume.get("secret")
            if secret:
                items = {item["key"] for item in secret.get("items", [])}
                needed.setdefault(secret["secretName"], set()).update(items)
        for container in pod.containers:
            for item in container.get("env", []):
                ref = item.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    needed.setdefault(ref["name"], set()).add(ref["key"])
    return needed


def test_secrets_are_the_ones_the_overlay_mounts_and_valid(tmp_path):
    docs = manifests("kind-1")
    for doc in docs:
        kubernetes_validate.validate(doc, "1.28", strict=True)
    made = {d["metadata"]["name"]: set(d["data"]) for d in docs}
    needed = _referenced_secrets()
    assert set(made) == set(needed)
    for name, keys in needed.items():
        assert keys <= made[name], name


def test_keys_load_the_way_the_services_load_them(tmp_path):
    by_name = {d["metadata"]["name"]: d["data"] for d in manifests("kind-7")}
    for name in ("urr-access-signing-key", "urr-entry-signing-key", "urr-log-signing-key"):
        data = {k: base64.b64decode(v) for k, v in by_name[name].items()}
        assert data["kid"] == b"kind-7"
        key = SigningKey.from_pem(data["signing.pem"], "kind-7")
        assert key.kid == "kind-7"
    for file_name, encoded in by_name["urr-vwr-public-keys"].items():
        (tmp_path / file_name).write_bytes(base64.b64decode(encoded))
    (public,) = load_verification_keys(sorted(tmp_path.glob("*.pem")))
    assert public.kid == "kind-7"
    # The admission log takes its holder-id key as it comes (a short one would be refused).
    holder = base64.b64decode(by_name["urr-admission-log"]["holder-secret"]).decode()
    options = LogOptions(holder_secret=holder)
    assert options.holder_secret.get_secret_value() == holder
    assert holder != LogOptions().holder_secret.get_secret_value()


def test_identity_key_and_queue_credentials_are_what_the_services_accept(tmp_path):
    by_name = {d["metadata"]["name"]: d["data"] for d in manifests("kind-7")}
    signing = {k: base64.b64decode(v) for k, v in by_name["urr-gateway-identity-key"].items()}
    key = SigningKey.from_pem(signing["signing.pem"], signing["kid"].decode())
    for file_name, encoded in by_name["urr-gateway-identity-public-keys"].items():
        (tmp_path / file_name).write_bytes(base64.b64decode(encoded))
    # The upstreams' glob finds the gateway's key under its kid.
    trusted = UpstreamIdentitySettings(public_key_files=[tmp_path / "*.pem"]).key_set()
    assert trusted.get("kind-7") == key.verification_key()
    callers = {
        k: base64.b64decode(v).decode() for k, v in by_name["urr-queue-internal-callers"].items()
    }
    queue_side = InternalListenerSettings.model_validate(
        {"callers": json.loads(callers["callers.json"])}
    )
    ticket_side = ServiceCredentialSettings(name=callers["caller"], secret=callers["ticket"])
    assert queue_side.callers[ticket_side.name] == ticket_side.secret


def test_every_run_makes_new_keys(capsys):
    assert main(["--kid", "k"]) == 0
    first = capsys.readouterr().out
    assert main(["--kid", "k"]) == 0
    assert capsys.readouterr().out != first
    assert first.count("kind: Secret") == 8
