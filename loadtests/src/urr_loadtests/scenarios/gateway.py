"""Authenticated GETs through every gateway filter to a cheap route.

Each user takes an access token the runner got by registering and logging in accounts at the
auth service beforehand (``URR_LT_TOKENS``: ``user_id token`` lines; argon2 is the login's
cost, not the gateway's, and AUTH's 20/min per address would throttle a crowd of logins from
one host); without that file it registers and logs in at the auth service in ``on_start``.
It then sends ``GET /api/v1/events`` with its access-token cookie through
cookie auth, JWT verification, the rate limiter and the route table. Users are many so that
GENERAL's 100/min per user is not what is measured; a 429 is still the design's intended
answer and is counted under its own name, never as an error.
"""

from __future__ import annotations

import itertools
import json
import uuid

from locust import FastHttpUser, task

from urr_loadtests.scenarios.common import FixedRate, env, env_float

PASSWORD = "load-test password 1"  # noqa: S105 - throwaway accounts on the local stack


def _load_tokens() -> list[str]:
    path = env("TOKENS", "")
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return [line.split()[1] for line in handle if line.strip()]


TOKENS = _load_tokens()
_next = itertools.count()


class GatewayUser(FastHttpUser):
    # GENERAL allows 100 per minute per user: stay just under it per user.
    def wait_time(self) -> float:
        return self.pace.next_wait()

    def on_start(self) -> None:
        self.pace = FixedRate(env_float("GATEWAY_RATE", 1.5))
        self.token = TOKENS[next(_next) % len(TOKENS)] if TOKENS else self._log_in()
        self.pace.start()

    def _log_in(self) -> str:
        auth = env("AUTH_URL", "http://127.0.0.1:3005")
        email = f"lt-gw-{uuid.uuid4().hex[:16]}@example.com"
        body = json.dumps({"email": email, "password": PASSWORD})
        headers = {"content-type": "application/json"}
        self.client.post(
            f"{auth}/api/v1/auth/register", data=body, headers=headers, name="setup: register"
        )
        login = self.client.post(
            f"{auth}/api/v1/auth/login", data=body, headers=headers, name="setup: login"
        )
        return str(login.json()["access_token"]) if login.status_code == 200 else ""

    @task
    def events(self) -> None:
        with self.client.get(
            "/api/v1/events",
            headers={"cookie": f"access_token={self.token}"},
            name="GET /api/v1/events",
            catch_response=True,
        ) as response:
            if response.status_code == 429:
                # Intended by the design: reported apart, not an error.
                response.request_meta["name"] = "GET /api/v1/events (429 intended)"
                response.success()
            elif response.status_code != 200:
                response.failure(f"status {response.status_code}")
