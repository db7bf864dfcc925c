"""The SAM template: cfn-lint finds nothing, and it declares what the design needs."""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]
from pydantic import BaseModel

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
