"""The API function's counts: EMF lines when metrics are on, nothing at all when off."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest


def _emf_counts(out: str) -> dict[str, float]:
    counts: dict[str, float] = {}
    for line in out.splitlines():
        if not line.startswith("{") or '"_aws"' not in line:
            continue
        document = json.loads(line)
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "URR/VWR"
        for metric in directive["Metrics"]:
            assert metric["Unit"] == "Count"
            value = document[metric["Name"]]
            counts[metric["Name"]] = counts.get(metric["Name"], 0) + (
                sum(value) if isinstance(value, list) else value
            )
    return counts


def test_with_metrics_on_each_invocation_prints_its_counts(
    vwr: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    vwr.open_event("counted")
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "false")
    capsys.readouterr()
    request_id = str(uuid.uuid4())
    assert vwr.assign("counted", request_id).status == 201
    assert vwr.assign("counted", request_id).status == 200
    assert vwr.check("counted", request_id).status == 200
    assert vwr.check("counted", "not-a-uuid").status == 400
    assert _emf_counts(capsys.readouterr().out) == {
        "AssignNew": 1,
        "AssignRepeat": 1,
        "Check": 1,
        "Problem400": 1,
    }
    assert not vwr.runtime.metrics.metric_set, "flushed with its invocation"


def test_with_metrics_off_nothing_is_stored_or_printed(
    vwr: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Off (as in the emulator's containers): a count is not even handed to powertools."""
    vwr.open_event("quiet")
    capsys.readouterr()
    added: list[str] = []
    metrics = vwr.runtime.metrics
    original = metrics.add_metric

    def spy(**kwargs: Any) -> None:
        added.append(kwargs["name"])
        original(**kwargs)

    metrics.add_metric = spy
    request_id = str(uuid.uuid4())
    assert vwr.assign("quiet", request_id).status == 201
    assert vwr.check("quiet", request_id).status == 200
    assert vwr.check("quiet", str(uuid.uuid4())).status == 404
    assert added == []
    assert not metrics.metric_set
    assert '"_aws"' not in capsys.readouterr().out
