"""The flash crowd: Locust users take the arrivals in turn, each going through once.

Arrivals skip the login form: each carries an access token the runner issued beforehand
(signed with the local stack's access key, ``URR_LT_TOKENS`` = a file of ``user_id token``
lines), because 5,000 argon2 logins would measure the password hash, not the waiting room.
Everything else is the journey: edge page, Tier 1 until admitted, Tier 2 until admitted,
seat map, hold, reserve, outcome. One JSON line per arrival goes to ``URR_LT_RESULTS``.
"""

from __future__ import annotations

import itertools
import time

import gevent  # type: ignore[import-untyped]
import gevent.event  # type: ignore[import-untyped]
from locust import FastHttpUser, constant, events, task
from locust.exception import StopUser
from locust.runners import STATE_CLEANUP, STATE_STOPPED, STATE_STOPPING

from urr_loadtests.scenarios.common import (
    ArrivalSchedule,
    ResultLog,
    calm_collector,
    env,
    env_float,
)
from urr_loadtests.scenarios.flow import Arrival, Flow, Unanswered

RESULTS = ResultLog(env("RESULTS", ""))
events.quitting.add_listener(lambda **_: RESULTS.close())  # type: ignore[no-untyped-call]


def _load_tokens() -> list[tuple[str, str]]:
    path = env("TOKENS", "")
    if not path:
        return []
    with open(path, encoding="utf-8") as handle:
        return [tuple(line.split()) for line in handle if line.strip()]  # type: ignore[misc]


TOKENS = _load_tokens()
_next = itertools.count()
_finished = itertools.count(1)
#: Set once every arrival has its outcome: the parked users stop waiting for their next poll.
_CROWD_DONE = gevent.event.Event()
SCHEDULE = ArrivalSchedule(env_float("SPAWN_RATE", 1.0))
calm_collector()


class FlashCrowdArrival(FastHttpUser):
    wait_time = constant(0)

    @task
    def arrive(self) -> None:
        index = next(_next)
        if index >= len(TOKENS):
            self.park()
        # Locust patches time.sleep to yield to the other users.
        time.sleep(SCHEDULE.wait_for(index))
        user_id, token = TOKENS[index]
        flow = Flow(
            self.client, env("EVENT", "demo"), deadline_s=env_float("ARRIVAL_DEADLINE_S", 240)
        )
        flow.cookies["access_token"] = token
        arrival = Arrival(user_id=user_id, started_at=time.time())
        try:
            flow.edge_page(arrival)
            flow.tier1(arrival)
            flow.tier2(arrival)
            flow.book(arrival)
        except Unanswered as exc:
            arrival.outcome = exc.outcome
            arrival.detail = str(exc)
        arrival.finished_at = time.time()
        RESULTS.write(arrival.record())
        runner = self.environment.runner
        if next(_finished) == len(TOKENS) and runner is not None:
            # Every arrival has its outcome: the run time is a bound, not a wait. Stopped the
            # way the run time stops it (reports written), from a greenlet of its own because
            # quitting stops this user too.
            gevent.spawn(runner.quit)
            _CROWD_DONE.set()
        # Back to Locust, which runs this task again: the same user takes the next arrival.

    def park(self) -> None:
        """Idle until the run stops, then stop (every arrival has been handed out).

        A user that stops while Locust is still spawning is replaced by a new one, and every
        replacement past the last token stopped and was replaced in turn: late in a
        5,000-arrival crowd Locust used up to 57 % of a core, much of it building such users.
        """
        runner = self.environment.runner
        while runner is not None and runner.state not in _ENDING:
            # Woken as soon as the last arrival is done (the quit is then under way: checked
            # again shortly), else every _PARK_POLL_S, well inside Locust's 10 s stop timeout.
            # Polled alone, the stop waited up to 5 s for the parked users after the crowd.
            if _CROWD_DONE.wait(timeout=_PARK_POLL_S):
                time.sleep(0.05)
        raise StopUser()


_ENDING = (STATE_STOPPING, STATE_STOPPED, STATE_CLEANUP)
_PARK_POLL_S = 5
