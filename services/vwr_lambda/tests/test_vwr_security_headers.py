"""The CloudFront response headers policy: every behaviour adds the security headers (seed 004
section 5.5, issue 16), the same ones the gateway sets on its own answers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cfnlint.decode import decode  # type: ignore[import-untyped]

from urr_gateway.responseheaders import security_headers

TEMPLATE = Path(__file__).resolve().parents[1] / "template.yaml"


def _resources() -> dict[str, Any]:
    template, matches = decode(str(TEMPLATE))
    assert not matches
    found: dict[str, Any] = template["Resources"]
    return found


def test_every_behaviour_uses_the_security_headers_policy() -> None:
    found = _resources()
    assert found["SecurityHeadersPolicy"]["Type"] == "AWS::CloudFront::ResponseHeadersPolicy"
    config = found["Distribution"]["Properties"]["DistributionConfig"]
    behaviours = [config["DefaultCacheBehavior"], *config["CacheBehaviors"]]
    assert len(behaviours) == 4  # default, /vwr-api/*, /vwr/events/*, /vwr/*
    for behaviour in behaviours:
        assert behaviour["ResponseHeadersPolicyId"] == {"Ref": "SecurityHeadersPolicy"}


def test_the_policy_sets_what_the_gateway_sets() -> None:
    policy = _resources()["SecurityHeadersPolicy"]["Properties"]["ResponseHeadersPolicyConfig"]
    headers = policy["SecurityHeadersConfig"]
    hsts = headers["StrictTransportSecurity"]
    cdn = {
        "Strict-Transport-Security": f"max-age={hsts['AccessControlMaxAgeSec']}"
        + ("; includeSubDomains" if hsts["IncludeSubdomains"] else ""),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": headers["FrameOptions"]["FrameOption"],
        "Referrer-Policy": headers["ReferrerPolicy"]["ReferrerPolicy"],
    }
    assert cdn == security_headers(over_tls=True, hsts_max_age_s=31_536_000)
    assert all(value["Override"] for value in headers.values())
