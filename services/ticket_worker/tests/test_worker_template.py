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


def test_the_function_reaches_postgres_and_kafka_over_verified_tls() -> None:
    """The function's environment loads into the worker's settings as verify-full and MSK IAM,
    and the CA bundle it names is shipped inside urr_common (the bundle's root is /var/task)."""
    import os

    import urr_common
    from urr_common.settings import load_settings
    from urr_ticket_worker.settings import TicketWorkerSettings

    variables = resources()["WorkerFunction"]["Properties"]["Environment"]["Variables"]
    plain = {k: v for k, v in variables.items() if isinstance(v, str) and k.startswith("URR_")}
    plain |= {
        "URR_POSTGRES__DSN": "postgresql://urr_worker@proxy.example:5432/urr",
        "URR_KAFKA__AWS_REGION": "ap-northeast-2",
    }
    saved = {k: v for k, v in os.environ.items() if k.startswith("URR_")}
    try:
        for name in saved:
            del os.environ[name]
        os.environ.update(plain)
        settings = load_settings(TicketWorkerSettings)
    finally:
        for name in [k for k in os.environ if k.startswith("URR_")]:
            del os.environ[name]
        os.environ.update(saved)
    assert settings.postgres.sslmode == "verify-full"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert settings.kafka.sasl_mechanism == "AWS_MSK_IAM"
    assert variables["URR_KAFKA__AWS_REGION"] == {"Ref": "AWS::Region"}
    shipped = Path(urr_common.__file__).parent
    for path in (settings.postgres.sslrootcert, settings.kafka.ca_file):
        relative = Path(str(path)).relative_to("/var/task/urr_common")
        assert (shipped / relative).is_file()
    # The function may connect to the cluster and write its topics, nothing else.
    statements = [
        s
        for policy in resources()["WorkerFunction"]["Properties"]["Policies"]
        if isinstance(policy, dict)
        for s in policy.get("Statement", [])
    ]
    actions = {a for s in statements for a in s["Action"]}
    assert actions == {
        "kafka-cluster:Connect",
        "kafka-cluster:DescribeTopic",
        "kafka-cluster:WriteData",
    }


def test_the_shipped_ca_bundle_is_the_one_the_pods_mount() -> None:
    import urr_common

    shipped = Path(urr_common.__file__).parent / "certs" / "amazon-trust-roots.crt"
    mounted = TEMPLATE.parents[2] / "k8s/components/managed-data-tls/amazon-trust-roots.crt"
    assert shipped.read_bytes() == mounted.read_bytes()
