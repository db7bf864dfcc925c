"""The gateway's rate-limit check API (internal listener) at a fixed rate.

Every user asks ``POST /internal/v1/ratelimit/check`` for its own key at ``URR_LT_CHECK_RATE``
calls per second (``FixedRate``: each user on a phase of its own), so the
total rate is users x rate, evenly spread. A denial
(``allowed: false``) is an answer like any other; only transport errors and non-200s fail.
"""

from __future__ import annotations

import itertools
import json

from locust import FastHttpUser, task

from urr_loadtests.scenarios.common import FixedRate, env, env_float

_ids = itertools.count()


class CheckApiUser(FastHttpUser):
    def wait_time(self) -> float:
        return self.pace.next_wait()

    def on_start(self) -> None:
        self.pace = FixedRate(env_float("CHECK_RATE", 50.0))
        self.pace.start()
        # Many keys, as a real caller fronting many subjects would send.
        self.key_base = f"lt-{next(_ids)}"
        self.calls = 0
        self.category = env("CHECK_CATEGORY", "general")
        self.headers = {
            "content-type": "application/json",
            "authorization": f"Bearer {env('CHECK_SECRET', '')}",
        }

    @task
    def check(self) -> None:
        self.calls += 1
        body = {"key": f"{self.key_base}-{self.calls % 50}", "category": self.category}
        with self.client.post(
            "/internal/v1/ratelimit/check",
            data=json.dumps(body),
            headers=self.headers,
            name="POST /internal/v1/ratelimit/check",
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            else:
                response.success()
