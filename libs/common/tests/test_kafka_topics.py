"""The topic provisioning command a cluster runs as a Job, against a real (Tansu) broker."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from urr_common.kafka_topics import TOPICS
from urr_devstack.procs import free_port

pytestmark = pytest.mark.integration


def provision(**env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("URR_")}
    return subprocess.run(
        [sys.executable, "-m", "urr_common.kafka_topics"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_creates_every_topic_then_finds_them_matching(kafka_bootstrap: str) -> None:
    first = provision(URR_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap)
    assert first.returncode == 0, first.stderr
    again = provision(URR_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap)
    assert again.returncode == 0, again.stderr
    assert "created" not in again.stdout
    assert f"{len(TOPICS)} topics match: 3 partitions, RF 1, min ISR 1" in again.stdout


def test_a_layout_the_broker_does_not_have_is_reported_not_used(kafka_bootstrap: str) -> None:
    assert provision(URR_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap).returncode == 0
    differs = provision(
        URR_KAFKA__BOOTSTRAP_SERVERS=kafka_bootstrap,
        URR_TOPICS__PARTITIONS="6",
        URR_TOPICS__RETENTION_MS="86400000",
    )
    assert differs.returncode == 1
    for topic in TOPICS:
        assert f"{topic}: 3 partitions, want 6" in differs.stderr
        assert f"{topic}: retention.ms=604800000, want 86400000" in differs.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("URR_TOPICS__MIN_INSYNC_REPLICAS", "3", "cannot exceed replication_factor"),
        ("URR_TOPICS__PARTITIONS", "0", "URR_TOPICS__PARTITIONS"),
        ("URR_TOPICS__RETENTION_MS", "10", "URR_TOPICS__RETENTION_MS"),
        ("URR_TOPICS__COMPACTION", "yes", "URR_TOPICS__COMPACTION"),
    ],
)
def test_a_bad_layout_setting_is_named_and_nothing_is_created(
    variable: str, value: str, message: str
) -> None:
    # No broker needed: the settings are refused before any connection.
    result = provision(URR_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1", **{variable: value})
    assert result.returncode == 2
    assert message in result.stderr


def test_an_unreachable_broker_exits_2_and_says_where() -> None:
    address = f"127.0.0.1:{free_port()}"
    result = provision(URR_KAFKA__BOOTSTRAP_SERVERS=address, URR_KAFKA__REQUEST_TIMEOUT_MS="1000")
    assert result.returncode == 2
    assert address in result.stderr
