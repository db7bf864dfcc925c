"""The gateway's own Prometheus metrics, registered on the application's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter


@dataclass(frozen=True)
class GatewayMetrics:
    #: Requests refused by a token filter, by filter and reason (bounded label values).
    token_rejections: Counter
    #: JWKS fetches by key source (access, entry) and outcome (ok, error).
    jwks_fetches: Counter
    #: Upstream failures answered by the proxy, by upstream and kind.
    upstream_errors: Counter
    #: Revocation lookups that could not reach Redis in time (the token was let through).
    revocation_failures: Counter

    @classmethod
    def register(cls, registry: CollectorRegistry) -> GatewayMetrics:
        return cls(
            token_rejections=Counter(
                "urr_gateway_token_rejections_total",
                "Requests refused by the JWT or entry-token filter.",
                ["filter", "reason"],
                registry=registry,
            ),
            jwks_fetches=Counter(
                "urr_gateway_jwks_fetches_total",
                "JWKS fetches by key source and outcome.",
                ["source", "outcome"],
                registry=registry,
            ),
            upstream_errors=Counter(
                "urr_gateway_upstream_errors_total",
                "Proxied requests that failed at the upstream, by upstream and kind.",
                ["upstream", "kind"],
                registry=registry,
            ),
            revocation_failures=Counter(
                "urr_gateway_revocation_check_failures_total",
                "Revoked-token lookups that failed or timed out (the token was accepted).",
                registry=registry,
            ),
        )
