"""The worker's SAM template: cfn-lint finds nothing, and it declares seed 004's settings."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]

from urr_ticket_worker import handler
from urr_ticket_worker.settings import SqsSettings

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"


@functools.cache
def template() -> dict[str, Any]:
    decoded, matches = decode(str(TEMPLATE))
    assert not matches
    assert decoded is not None
    found: dict[str, Any] = decoded
    return found


def resources() -> dict[str, Any]:
    found: dict[str, Any] = template()["Resources"]
    return found


def test_cfn_lint_finds_nothing() -> None:
    matches = lint_file(TEMPLATE, config={"regions": ["us-east-1"]})
    assert [str(match) for match in matches] == []


def test_queues_keep_the_seed_settings() -> None:
    queue = resources()["TicketEventsQueue"]["Properties"]
    assert queue["FifoQueue"] is True
    assert queue["MessageRetentionPeriod"] == 4 * 24 * 3600
    assert queue["VisibilityTimeout"] == 300
    assert queue["ReceiveMessageWaitTimeSeconds"] == 10
    assert queue["SqsManagedSseEnabled"] is True
    redrive = queue["RedrivePolicy"]
    assert redrive["maxReceiveCount"] == SqsSettings().max_receive_count == 3
    dlq = resources()["TicketEventsDlq"]["Properties"]
    assert dlq["FifoQueue"] is True
    assert dlq["MessageRetentionPeriod"] == 14 * 24 * 3600
    assert dlq["SqsManagedSseEnabled"] is True


def test_the_function_reports_partial_batch_failures_and_names_a_real_handler() -> None:
    function = resources()["WorkerFunction"]["Properties"]
    module, _, name = function["Handler"].rpartition(".")
    assert module == handler.__name__
    assert callable(getattr(handler, name))
    # SQS requires the visibility timeout to cover a whole invocation.
    assert (
        function["Timeout"] <= resources()["TicketEventsQueue"]["Properties"]["VisibilityTimeout"]
    )
    source = function["Events"]["Commands"]["Properties"]
    assert source["FunctionResponseTypes"] == ["ReportBatchItemFailures"]
    assert source["BatchSize"] == SqsSettings().batch_size == 10
    assert source["MaximumBatchingWindowInSeconds"] == 5
    concurrency = source["ScalingConfig"]["MaximumConcurrency"]
    assert concurrency == {"Fn::If": ["IsProd", 10, 5]}


def test_every_alarm_of_seed_section_10_notifies_the_topic() -> None:
    alarms = {
        name: body["Properties"]
        for name, body in resources().items()
        if body["Type"] == "AWS::CloudWatch::Alarm"
    }
    watched = {(a["Namespace"], a["MetricName"], a["Threshold"]) for a in alarms.values()}
    assert watched == {
        ("AWS/SQS", "ApproximateNumberOfMessagesVisible", 0),
        ("AWS/SQS", "ApproximateAgeOfOldestMessage", 600),
        ("AWS/Lambda", "Errors", 5),
        ("AWS/Lambda", "Duration", 24000),
        ("AWS/Lambda", "Throttles", 0),
    }
    for alarm in alarms.values():
        assert alarm["AlarmActions"] == [{"Ref": "AlarmTopic"}]
