"""The SAM template: cfn-lint finds nothing, and it declares what the design needs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from cfnlint.api import lint_file  # type: ignore[import-untyped]
from cfnlint.decode import decode  # type: ignore[import-untyped]

from urr_vwr_lambda.settings import TableSettings
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
    assert len(admin) == 3
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
