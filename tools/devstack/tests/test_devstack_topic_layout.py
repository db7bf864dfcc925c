"""The topic layout setting: validated at start-up, compared against what a broker reports."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from urr_common.kafka_topics import TopicFacts, TopicLayout, layout_mismatches
from urr_devstack.settings import DevstackSettings

SEED_PROD = TopicLayout(partitions=3, replication_factor=2, min_insync_replicas=2)


def test_min_isr_above_the_replication_factor_is_refused_with_the_reason() -> None:
    with pytest.raises(ValidationError, match="cannot exceed replication_factor"):
        TopicLayout(replication_factor=1, min_insync_replicas=2)


@pytest.mark.parametrize(
    ("field", "value"),
    [("partitions", 0), ("replication_factor", 0), ("retention_ms", 10), ("partitions", 65)],
)
def test_out_of_range_layouts_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValidationError, match=field):
        TopicLayout.model_validate({field: value})


def test_settings_read_the_layout_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("URR_DEVSTACK__KAFKA_TOPICS__PARTITIONS", "6")
    monkeypatch.setenv("URR_DEVSTACK__KAFKA_TOPICS__RETENTION_MS", "86400000")
    layout = DevstackSettings().kafka_topics
    assert (layout.partitions, layout.retention_ms, layout.replication_factor) == (6, 86400000, 1)
    monkeypatch.setenv("URR_DEVSTACK__KAFKA_TOPICS__MIN_INSYNC_REPLICAS", "3")
    with pytest.raises(ValidationError, match="min_insync_replicas"):
        DevstackSettings()


def test_the_seed_layout_sets_its_configs() -> None:
    assert SEED_PROD.configs() == {"min.insync.replicas": "2", "retention.ms": str(7 * 86_400_000)}


def test_mismatches_name_each_difference() -> None:
    facts = TopicFacts(3, 1, {"min.insync.replicas": "1", "retention.ms": "604800000"})
    assert layout_mismatches("t", SEED_PROD, facts) == [
        "t: replication factor 1, want 2",
        "t: min.insync.replicas=1, want 2",
    ]
    assert layout_mismatches("t", SEED_PROD, None) == ["t: missing"]
    # A broker that does not report a config does not contradict it.
    assert layout_mismatches("t", SEED_PROD, TopicFacts(3, 2, {})) == []
