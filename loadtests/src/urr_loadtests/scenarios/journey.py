"""The whole journey, as a visitor does it: one fresh account per journey.

Edge page -> waiting page API (assign, check until admitted) -> log in through the edge ->
Tier-2 enter and status until admitted -> seat map -> hold -> reserve -> poll until the
outcome. The account is registered at the auth service directly first (setup, not measured
as part of the journey). The event's Tier-1 room must be active (the runner activates it).
"""

from __future__ import annotations

import time
import uuid

from locust import FastHttpUser, between, events, task

from urr_loadtests.scenarios.common import ResultLog, env, env_float
from urr_loadtests.scenarios.flow import JSON, Arrival, Flow, Unanswered

PASSWORD = "load-test password 1"  # noqa: S105 - throwaway accounts on the local stack
RESULTS = ResultLog(env("RESULTS", ""))
events.quitting.add_listener(lambda **_: RESULTS.close())  # type: ignore[no-untyped-call]


class JourneyUser(FastHttpUser):
    wait_time = between(1, 3)

    @task
    def journey(self) -> None:
        event_id = env("EVENT", "demo")
        email = f"lt-j-{uuid.uuid4().hex[:16]}@example.com"
        registered = self.client.post(
            f"{env('AUTH_URL', 'http://127.0.0.1:3005')}/api/v1/auth/register",
            data=f'{{"email": "{email}", "password": "{PASSWORD}"}}',
            headers=JSON,
            name="setup: register",
        )
        if registered.status_code != 201:
            return
        user_id = str(registered.json()["id"])
        flow = Flow(self.client, event_id, deadline_s=env_float("ARRIVAL_DEADLINE_S", 300))
        arrival = Arrival(user_id=user_id, started_at=time.time())
        try:
            flow.edge_page(arrival)
            flow.tier1(arrival)
            flow.login(arrival, email, PASSWORD)
            flow.tier2(arrival)
            flow.book(arrival)
        except Unanswered as exc:
            arrival.outcome = exc.outcome
            arrival.detail = str(exc)
        arrival.finished_at = time.time()
        RESULTS.write(arrival.record())
