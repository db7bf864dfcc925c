"""Staging and prod talk to their data stores over verified TLS, with AUTH or IAM.

Read from the rendered overlays the way the processes read them: each workload's settings are
built from its container's environment, and each certificate file they name must be a key of
the ConfigMap mounted at that path.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from urr_common.settings import KafkaSettings, PostgresSettings, RedisSettings
from urr_deploycheck.derive import main_container, workload_settings
from urr_deploycheck.manifests import (
    Manifest,
    PodTemplate,
    by_kind,
    container_env,
    pod_templates,
    render,
)
from urr_deploycheck.services import Target, workload, workloads_for

REPO = Path(__file__).resolve().parents[3]
COMPONENT = REPO / "k8s" / "components" / "managed-data-tls"
MANAGED = ("staging", "prod")


@cache
def rendered(overlay: str) -> tuple[Manifest, ...]:
    return tuple(render(REPO / "k8s" / "overlays" / overlay))


def _pods(overlay: str) -> list[PodTemplate]:
    names = {w.name for w in workloads_for(Target.K8S)}
    pods = [p for p in pod_templates(rendered(overlay)) if p.name in names]
    assert pods
    return pods


def _blocks(overlay: str, pod: PodTemplate) -> dict[type, list[Any]]:
    """The Redis, PostgreSQL and Kafka blocks of every settings object ``pod`` builds."""
    env = container_env(main_container(pod), rendered(overlay)).values
    found: dict[type, list[Any]] = {RedisSettings: [], PostgresSettings: [], KafkaSettings: []}
    for settings in workload_settings(workload(pod.name), env):
        for name in type(settings).model_fields:
            value = getattr(settings, name)
            if type(value) in found:
                found[type(value)].append(value)
    return found


def _mounted_files(overlay: str, pod: PodTemplate) -> dict[PurePosixPath, str]:
    """Every file a ConfigMap volume puts into the main container: path -> content."""
    config_maps = by_kind(rendered(overlay), "ConfigMap")
    volumes: Mapping[str, Any] = {v["name"]: v for v in pod.spec.get("volumes", [])}
    files: dict[PurePosixPath, str] = {}
    for mount in main_container(pod).get("volumeMounts", []):
        source = volumes[mount["name"]].get("configMap")
        if source is None:
            continue
        data = config_maps[source["name"]].get("data", {})
        for key, content in data.items():
            files[PurePosixPath(mount["mountPath"]) / key] = content
    return files


def _trusted_names(pem: str) -> set[str]:
    context = ssl.create_default_context(cadata=pem)
    names: set[str] = set()
    for cert in context.get_ca_certs():
        subject: Any = cert["subject"]
        names |= {value for rdn in subject for key, value in rdn if key == "commonName"}
    return names


def test_the_bundle_holds_the_amazon_trust_services_roots():
    names = _trusted_names((COMPONENT / "amazon-trust-roots.crt").read_text())
    assert {f"Amazon Root CA {n}" for n in (1, 2, 3, 4)} <= names


@pytest.mark.parametrize("overlay", MANAGED)
def test_every_data_store_client_verifies_tls_against_a_mounted_ca(overlay):
    checked = {RedisSettings: 0, PostgresSettings: 0, KafkaSettings: 0}
    for pod in _pods(overlay):
        files = _mounted_files(overlay, pod)
        blocks = _blocks(overlay, pod)
        for redis in blocks[RedisSettings]:
            assert redis.uses_tls, pod.name
            assert redis.url.startswith("rediss://"), pod.name
            assert PurePosixPath(str(redis.ca_file)) in files, f"{pod.name}: CA not mounted"
            checked[RedisSettings] += 1
        for pg in blocks[PostgresSettings]:
            assert pg.sslmode == "verify-full", pod.name
            assert PurePosixPath(str(pg.sslrootcert)) in files, f"{pod.name}: root not mounted"
            assert "sslmode" not in pg.dsn.get_secret_value()
            checked[PostgresSettings] += 1
        for kafka in blocks[KafkaSettings]:
            assert kafka.security_protocol == "SASL_SSL", pod.name
            assert kafka.sasl_mechanism == "AWS_MSK_IAM", pod.name
            assert kafka.aws_region, pod.name
            assert PurePosixPath(str(kafka.ca_file)) in files, f"{pod.name}: CA not mounted"
            # MSK's IAM listener.
            ports = {server.rpartition(":")[2] for server in kafka.bootstrap_servers.split(",")}
            assert ports == {"9098"}, pod.name
            checked[KafkaSettings] += 1
    assert all(checked.values()), checked  # every kind of client was seen


@pytest.mark.parametrize("overlay", MANAGED)
def test_the_mounted_ca_bundle_is_the_amazon_roots(overlay):
    for pod in _pods(overlay):
        for path, content in _mounted_files(overlay, pod).items():
            if path.parent == PurePosixPath("/etc/urr/ca"):
                assert "Amazon Root CA 1" in _trusted_names(content)


@pytest.mark.parametrize("overlay", MANAGED)
def test_the_redis_auth_token_goes_to_the_redis_clients_alone(overlay):
    for pod in _pods(overlay):
        env = container_env(main_container(pod), rendered(overlay))
        uses_redis = bool(_blocks(overlay, pod)[RedisSettings])
        source = env.from_secrets.get("URR_REDIS__PASSWORD")
        if uses_redis:
            assert source == "urr-redis-auth/password", pod.name
        else:
            assert source is None, f"{pod.name} has no Redis but gets its password"


def test_kind_keeps_plain_local_data_stores():
    for pod in pod_templates(rendered("kind")):
        env = container_env(main_container(pod), rendered("kind")).values
        assert "URR_KAFKA__SECURITY_PROTOCOL" not in env
        assert "URR_POSTGRES__SSLMODE" not in env
