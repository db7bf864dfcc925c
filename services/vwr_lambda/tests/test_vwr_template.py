"""The SAM template: cfn-lint finds nothing, and it declares what the design needs."""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any

import pytest
from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]
from pydantic import BaseModel

import urr_common
from urr_common.clients import kafka_security_kwargs
from urr_common.settings import SettingsError, load_settings
from urr_vwr_lambda.settings import TableSettings, VwrSettings
from urr_vwr_lambda.tables import positions_table

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"


@functools.cache
def resources() -> dict[str, Any]:
    template, matches = decode(str(TEMPLATE))
    assert not matches
    assert template is not None
    found: dict[str, Any] = template["Resources"]
    return found


def test_cfn_lint_finds_nothing() -> None:
    matches = lint_file(TEMPLATE, config={"regions": ["us-east-1"]})
    assert [str(match) for match in matches] == []


def test_positions_have_ttl_and_the_keys_the_code_creates_locally() -> None:
    table = resources()["PositionsTable"]["Properties"]
    assert table["TimeToLiveSpecification"] == {"AttributeName": "ttl", "Enabled": True}
    local = positions_table(TableSettings())
    assert table["KeySchema"] == local["KeySchema"]
    assert table["AttributeDefinitions"] == local["AttributeDefinitions"]
    assert "GlobalSecondaryIndexes" not in table


def test_the_advancer_runs_every_minute_and_admin_routes_need_iam() -> None:
    found = resources()
    schedule = found["AdvancerFunction"]["Properties"]["Events"]["EveryMinute"]["Properties"]
    assert schedule["ScheduleExpression"] == "rate(1 minute)"
    events = found["ApiFunction"]["Properties"]["Events"]
    admin = {name: e for name, e in events.items() if "/admin/" in e["Properties"]["Path"]}
    assert len(admin) == 10
    assert all(e["Properties"]["Auth"]["Authorizer"] == "AWS_IAM" for e in admin.values())
    public = [e for e in events.values() if "/admin/" not in e["Properties"]["Path"]]
    assert all("Auth" not in e["Properties"] for e in public)


def test_the_edge_function_has_no_environment() -> None:
    edge = resources()["EdgeFunction"]["Properties"]
    assert "Environment" not in edge
    assert edge["Handler"] == "urr_vwr_lambda.edge.handler"


def test_the_proof_of_work_challenge_route_is_public() -> None:
    events = resources()["ApiFunction"]["Properties"]["Events"]
    challenge = events["Challenge"]["Properties"]
    assert (challenge["Path"], challenge["Method"]) == ("/vwr/challenge/{eventId}", "GET")
    assert "Auth" not in challenge


def test_a_cloudfront_web_acl_rate_limits_the_tier1_api_per_ip_on_the_distribution() -> None:
    found = resources()
    acl = found["WebAcl"]["Properties"]
    assert acl["Scope"] == "CLOUDFRONT"
    rules = {rule["Name"]: rule for rule in acl["Rules"]}
    rate = rules["tier1-api-rate-per-ip"]["Statement"]["RateBasedStatement"]
    assert (rate["Limit"], rate["EvaluationWindowSec"], rate["AggregateKeyType"]) == (
        1000,
        120,
        "IP",
    )
    scope = rate["ScopeDownStatement"]["ByteMatchStatement"]
    assert (scope["PositionalConstraint"], scope["SearchString"]) == ("STARTS_WITH", "/vwr-api/")
    assert "Block" in rules["tier1-api-rate-per-ip"]["Action"]
    managed = {
        r["Statement"]["ManagedRuleGroupStatement"]["Name"]
        for r in acl["Rules"]
        if "ManagedRuleGroupStatement" in r["Statement"]
    }
    assert managed == {"AWSManagedRulesCommonRuleSet", "AWSManagedRulesKnownBadInputsRuleSet"}
    config = found["Distribution"]["Properties"]["DistributionConfig"]
    assert config["WebACLId"] == {"Fn::GetAtt": ["WebAcl", "Arn"]}


def test_the_api_origin_sends_the_secret_the_function_checks() -> None:
    found = resources()
    config = found["Distribution"]["Properties"]["DistributionConfig"]
    [api] = [o for o in config["Origins"] if o["Id"] == "vwr-api"]
    [header] = api["OriginCustomHeaders"]
    assert header["HeaderName"] == VwrSettings().gates.origin.header
    assert "resolve:secretsmanager:${OriginVerifySecret}" in header["HeaderValue"]["Fn::Sub"]
    function = found["ApiFunction"]["Properties"]
    env = function["Environment"]["Variables"]
    assert env["URR_GATES__ORIGIN__SECRET_ID"] == {"Ref": "OriginVerifySecret"}
    readable = [
        p["AWSSecretsManagerGetSecretValuePolicy"]["SecretArn"]
        for p in function["Policies"]
        if "AWSSecretsManagerGetSecretValuePolicy" in p
    ]
    assert {"Ref": "OriginVerifySecret"} in readable


def _setting_exists(model: type[BaseModel], path: list[str]) -> bool:
    field = model.model_fields.get(path[0])
    if field is None:
        return False
    if len(path) == 1:
        return True
    inner = field.annotation
    return (
        isinstance(inner, type)
        and issubclass(inner, BaseModel)
        and (_setting_exists(inner, path[1:]))
    )


def test_every_urr_variable_of_the_functions_is_a_setting() -> None:
    """A misspelt variable would be ignored (extra="ignore"), leaving the check off."""
    for name in ("ApiFunction", "AdvancerFunction"):
        env = resources()[name]["Properties"]["Environment"]["Variables"]
        for variable in env:
            if variable.startswith("URR_"):
                path = variable.removeprefix("URR_").lower().split("__")
                assert _setting_exists(VwrSettings, path), (name, variable)


def test_every_admin_route_of_the_function_is_in_the_template() -> None:
    events = resources()["ApiFunction"]["Properties"]["Events"].values()
    declared = {(e["Properties"]["Method"], e["Properties"]["Path"]) for e in events}
    source = (Path(__file__).resolve().parents[1] / "src/urr_vwr_lambda").rglob("*.py")
    routes = set()
    for module in source:
        for method, path in re.findall(
            r'@router\.(get|put|post)\("(/vwr/admin/[^"]+)"\)', module.read_text()
        ):
            routes.add((method.upper(), re.sub(r"<(\w+)>", _camel, path)))
    assert routes
    assert routes <= declared


def _camel(match: re.Match[str]) -> str:
    head, *rest = match.group(1).split("_")
    return "{" + head + "".join(part.title() for part in rest) + "}"


def test_waiting_page_cache_rules_are_explicit_and_documents_short_lived() -> None:
    """Issue 21: no 24 h default TTL on /vwr/* (the managed CachingOptimized policy), and an
    operator's change to an event's page shows within a minute."""
    found = resources()
    config = found["Distribution"]["Properties"]["DistributionConfig"]
    behaviours = config["CacheBehaviors"]
    patterns = [b["PathPattern"] for b in behaviours]
    assert patterns.index("/vwr/events/*") < patterns.index("/vwr/*")
    by_pattern = {b["PathPattern"]: b for b in behaviours}
    page = by_pattern["/vwr/*"]["CachePolicyId"]
    assert page != "658327ea-f89d-4fab-a63d-7e88639e58f6"  # CachingOptimized: 24 h default
    page_policy = found[page["Ref"]]["Properties"]["CachePolicyConfig"]
    assert page_policy["DefaultTTL"] <= 300  # seed 004's 5 min for an object without rules
    assert page_policy["MaxTTL"] >= 31536000  # the versioned assets' year is honoured
    documents = found[by_pattern["/vwr/events/*"]["CachePolicyId"]["Ref"]]
    assert documents["Properties"]["CachePolicyConfig"]["MaxTTL"] <= 60
    rewrite = found["WaitingPageRewrite"]["Properties"]["FunctionCode"]
    assert '"/vwr/events/"' in rewrite


# Issue 19: the random draw's grant log, wired for production (MSK IAM over TLS, in a VPC).

#: Sample deploy-time values of the template's parameters; the cluster is in another region
#: than the stack (us-east-1, for Lambda@Edge), as the EKS overlays' MSK is.
CLUSTER_ARN = "arn:aws:kafka:ap-northeast-2:123456789012:cluster/urr-msk/0f1e2d3c-aaaa-bbbb-1"
PARAMETERS = {
    "KafkaClusterArn": CLUSTER_ARN,
    "KafkaBootstrapServers": "b-1.urr-msk.example:9098,b-2.urr-msk.example:9098",
    "SigningKeySecretArn": "arn:aws:secretsmanager:us-east-1:123456789012:secret:vwr-key",
    "SigningKeyId": "vwr-1",
    "QueueCapacityUrl": "https://queue.internal.example",
    "AccessJwksUrl": "https://auth.internal.example/.well-known/jwks.json",
    "CountersTable": "counters-x",
    "PositionsTable": "positions-x",
    "OriginVerifySecret": "arn:aws:secretsmanager:us-east-1:123456789012:secret:origin",
    "WaitingPageBucket": "bucket-x",
    "AWS::Region": "us-east-1",
}
#: The functions whose code publishes: the API (admin event PUT commits a random room's seed,
#: admin advance draws, the reveal route reveals) and the advancer (commits and draws).
PUBLISHERS = ("ApiFunction", "AdvancerFunction")


def _resolve(value: Any) -> Any:
    """The intrinsic functions these tests meet, evaluated with ``PARAMETERS``."""
    if not isinstance(value, dict):
        return value
    [(name, argument)] = value.items()
    if name == "Ref":
        return PARAMETERS[argument]
    if name == "Fn::Sub":
        return re.sub(r"\$\{([^}]+)\}", lambda m: PARAMETERS[m.group(1)], argument)
    if name == "Fn::Split":
        separator, source = argument
        return _resolve(source).split(separator)
    if name == "Fn::Select":
        index, source = argument
        return _resolve(source)[index]
    if name == "Fn::Join":
        separator, parts = argument
        return separator.join(_resolve(part) for part in parts)
    raise AssertionError(f"no sample for {value}")


def _deployed_settings(function: str, monkeypatch: pytest.MonkeyPatch) -> VwrSettings:
    """``function``'s settings as its container would load them (prod validators included)."""
    variables = resources()[function]["Properties"]["Environment"]["Variables"]
    for name in [n for n in os.environ if n.startswith("URR_")]:
        monkeypatch.delenv(name)
    for name, value in variables.items():
        if name.startswith("URR_"):
            monkeypatch.setenv(name, _resolve(value))
    return load_settings(VwrSettings)


@pytest.mark.parametrize("function", PUBLISHERS)
def test_the_publishers_log_the_draw_to_msk_over_iam_and_verified_tls(
    function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = _deployed_settings(function, monkeypatch)
    assert settings.environment == "prod"
    log = settings.grant_log
    assert log.enabled
    assert log.topic == "queue-events"
    kafka = log.kafka
    assert kafka.bootstrap_servers == PARAMETERS["KafkaBootstrapServers"]
    assert (kafka.security_protocol, kafka.sasl_mechanism) == ("SASL_SSL", "AWS_MSK_IAM")
    # Signed for the cluster's region, not the stack's.
    assert kafka.aws_region == "ap-northeast-2"
    # The bundle ships inside urr_common (the Lambda bundle's root is /var/task), and it is
    # the one the EKS pods trust for MSK.
    relative = Path(str(kafka.ca_file)).relative_to("/var/task/urr_common")
    shipped = Path(urr_common.__file__).parent / relative
    mounted = TEMPLATE.parents[2] / "k8s/components/managed-data-tls/amazon-trust-roots.crt"
    assert shipped.read_bytes() == mounted.read_bytes()
    # What the producer is built with (the bundle read from here, as /var/task in Lambda):
    # TLS to the brokers that trusts the bundle's roots, and the MSK IAM token.
    security = kafka_security_kwargs(kafka.model_copy(update={"ca_file": shipped}))
    assert security["ssl_context"].get_ca_certs()
    assert security["sasl_mechanism"] == "OAUTHBEARER"
    assert security["sasl_oauth_token_provider"].region == "ap-northeast-2"


def test_a_grant_log_without_its_ca_bundle_fails_the_settings_check(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The check the test above relies on does refuse an incomplete MSK block."""
    _deployed_settings("AdvancerFunction", monkeypatch)
    monkeypatch.delenv("URR_GRANT_LOG__KAFKA__CA_FILE")
    with pytest.raises(SettingsError, match="URR_KAFKA__CA_FILE"):
        load_settings(VwrSettings)


@pytest.mark.parametrize("function", PUBLISHERS)
def test_the_publishers_may_connect_and_write_queue_events_and_nothing_else(
    function: str,
) -> None:
    policies = resources()[function]["Properties"]["Policies"]
    granted: dict[str, set[str]] = {}
    for policy in policies:
        for statement in policy.get("Statement", []):
            actions = statement["Action"]
            listed = actions if isinstance(actions, list) else [actions]
            kafka = [a for a in listed if a.startswith("kafka")]
            if not kafka:
                continue
            assert statement["Effect"] == "Allow"
            targets = statement["Resource"]
            for target in targets if isinstance(targets, list) else [targets]:
                granted.setdefault(_resolve(target), set()).update(kafka)
    topic = CLUSTER_ARN.replace(":cluster/", ":topic/") + "/queue-events"
    assert granted == {
        CLUSTER_ARN: {"kafka-cluster:Connect"},
        topic: {"kafka-cluster:DescribeTopic", "kafka-cluster:WriteData"},
    }


def test_the_publishers_run_in_the_vpc_and_the_edge_function_does_not() -> None:
    found = resources()
    for function in PUBLISHERS:
        vpc = found[function]["Properties"]["VpcConfig"]
        assert vpc == {
            "SubnetIds": {"Ref": "SubnetIds"},
            "SecurityGroupIds": {"Ref": "SecurityGroupIds"},
        }
    # Lambda@Edge refuses a VPC configuration; Globals must not hand it one either.
    assert "VpcConfig" not in found["EdgeFunction"]["Properties"]
    decoded, _ = decode(str(TEMPLATE))
    assert "VpcConfig" not in decoded.get("Globals", {}).get("Function", {})
