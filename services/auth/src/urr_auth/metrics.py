"""Prometheus metrics of the auth service, registered on the application's registry."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram


@dataclass(frozen=True)
class AuthMetrics:
    registrations: Counter
    logins: Counter
    password_seconds: Histogram

    @classmethod
    def register(cls, registry: CollectorRegistry) -> AuthMetrics:
        return cls(
            registrations=Counter(
                "urr_auth_registrations_total",
                "Registration attempts by outcome.",
                ["outcome"],
                registry=registry,
            ),
            logins=Counter(
                "urr_auth_logins_total",
                "Login attempts by outcome.",
                ["outcome"],
                registry=registry,
            ),
            password_seconds=Histogram(
                "urr_auth_password_seconds",
                "Time spent in argon2 per operation (hash or verify), excluding queueing.",
                ["operation"],
                buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
                registry=registry,
            ),
        )

    def observe_password(self, operation: str, seconds: float) -> None:
        self.password_seconds.labels(operation).observe(seconds)
