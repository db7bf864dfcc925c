"""One arrival's way through the suite, shared by the ``journey`` and ``flash_crowd`` files.

Event page through the edge (sent to the waiting page) -> Tier-1 assign and check until
admitted -> the event page again, now let through -> (log in) -> Tier-2 enter and status
until admitted -> seat map -> hold -> reserve -> poll until the outcome. Every request goes
through the edge, which forwards ``/api`` to the gateway, as a browser's would. Tokens travel
as the browser's cookies do, set by hand so every request shows exactly what it carries.

The outcome of an arrival is one of: ``confirmed``, ``declined`` (the booking was refused),
``sold_out`` (admitted, but no seat was free), ``rate_limited`` (still told 429 when its
time ran out: the design's answer), or ``unanswered`` with the request that failed. The
outcome is read where its owner reads it once the Tier-2 session is over:
``/api/v1/events/{eventId}/reservations/{reservationId}``.
"""

from __future__ import annotations

import json
import random
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Any

import gevent  # type: ignore[import-untyped]
from locust import events
from locust.contrib.fasthttp import FastHttpSession

from urr_loadtests.pow import SolverPool
from urr_loadtests.scenarios.common import answer_json, env, problem_code

JSON = {"content-type": "application/json"}
#: Times a visitor solves a new challenge after a refusal before it gives up.
POW_ROUNDS = 3
#: Processes that solve the crowd's proofs of work (only started when an event asks).
SOLVERS = SolverPool(int(env("POW_SOLVERS", "2")))
events.quitting.add_listener(lambda **_: SOLVERS.close())  # type: ignore[no-untyped-call]
FINAL = {"confirmed", "declined", "expired", "cancelled"}
TIER2_POLL_CAP_S = 5.0


@dataclass
class Arrival:
    """What one arrival saw, logged as one JSON line for the runner's checks."""

    user_id: str
    started_at: float
    tier1_position: int | None = None
    tier1_admitted_at: float | None = None
    tier2_position: int | None = None
    tier2_admitted_at: float | None = None
    first_ticket_call: float | None = None
    last_ticket_ok: float | None = None
    reservation_id: str | None = None
    seat_id: str | None = None
    outcome: str = "unanswered"
    detail: str = ""
    finished_at: float | None = None
    #: Proofs of work solved for the assign (events with ``botChallenge: pow``) and their time.
    pow_solves: int = 0
    pow_solve_s: float = 0.0
    #: Kept so the runner can replay them as someone else afterwards (local test tokens).
    vwr_token: str | None = None
    entry_token: str | None = None
    statuses: dict[str, int] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def detach_cookie_jar(client: FastHttpSession) -> None:
    """Sends only the cookies a visitor chose (``Flow.cookies``): the session's user agent
    gets no cookie jar.

    With its jar, the agent read every request's cookies from it and every answer's
    ``Set-Cookie`` into it (``http.cookiejar``: 6 % of Locust's CPU in a crowd against a
    stub, bench/locust_client_cpu.py), and the flow cleared it before each request so that
    nothing from it was sent anyway; a retry after a 429 or a 5xx could still carry a cookie
    the refusal set. Without it, nothing but ``Flow.cookies`` is ever sent.
    """
    client.cookiejar.clear()
    client.client.cookiejar = None


def _seconds(retry_after: str | None) -> float:
    """A ``Retry-After`` in seconds (a date or nonsense counts as one second)."""
    try:
        return max(0.0, float(retry_after or 1))
    except ValueError:
        return 1.0


class Unanswered(Exception):
    """The suite gave no clear answer (5xx, a hang, or an unexpected status)."""

    outcome = "unanswered"


class RateLimited(Unanswered):
    """Still told 429 (the design's answer, with Retry-After) when the arrival's time ran
    out: a clear answer, not a failure of the suite."""

    outcome = "rate_limited"


class Flow:
    def __init__(
        self,
        client: FastHttpSession,
        event_id: str,
        *,
        deadline_s: float,
        max_poll_s: float = 30.0,
    ) -> None:
        self.client = client
        self.event_id = event_id
        self.deadline = time.time() + deadline_s
        self.max_poll_s = max_poll_s
        self.cookies: dict[str, str] = {}
        detach_cookie_jar(client)

    # -- plumbing ---------------------------------------------------------------------------

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(extra or {})
        if self.cookies:
            headers["cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            # What a browser's same-origin fetch says; the gateway's CSRF rule needs it on
            # cookie-authenticated POSTs.
            headers["Sec-Fetch-Site"] = "same-origin"
        return headers

    def call(
        self,
        method: str,
        path: str,
        name: str,
        arrival: Arrival,
        *,
        body: Any = None,
        ok: tuple[int, ...] = (200,),
        expected: tuple[int, ...] = (),
        intended: tuple[int, ...] = (),
        headers: dict[str, str] | None = None,
        retry_unavailable: bool = False,
    ) -> tuple[int, Any]:
        """One request: ``ok`` and ``expected`` statuses are answers, others are failures.

        ``intended`` statuses are answers too, counted apart as ``<name> (<status> intended)``
        (a proof of work asked for), so they do not mix with the route's own figures.

        ``retry_unavailable``: a 502/503/504 still counts as an error, but the visitor does
        what the waiting page does (back off 2, 4, 8... up to 30 s, keep the place, ask
        again) instead of giving up.
        """
        failures = limited = 0
        if time.time() > self.deadline:
            raise Unanswered(f"deadline passed before {name}")
        extra = dict(headers or {})
        data = None
        if body is not None:
            extra.update(JSON)
            data = json.dumps(body)
        while True:
            with self.client.request(
                method,
                path,
                data=data,
                headers=self._headers(extra),
                name=name,
                catch_response=True,
                allow_redirects=False,
            ) as response:
                status = response.status_code
                key = f"{name} {status}"
                arrival.statuses[key] = arrival.statuses.get(key, 0) + 1
                if status == 429:
                    # The design's answer to a client over its limit: counted apart, never an
                    # error; the visitor waits as told and asks again.
                    response.request_meta["name"] = f"{name} (429 intended)"
                    response.success()
                    # At least as long as told; longer on each refusal in a row, as the
                    # waiting page does, so a throttled crowd does not retry in lockstep.
                    limited += 1
                    told = _seconds(response.headers.get("retry-after"))
                    retry = str(max(told, min(30, 2**limited)) * random.uniform(0.8, 1.2))  # noqa: S311
                elif status in ok or status in expected or status in intended:
                    if status in intended:
                        response.request_meta["name"] = f"{name} ({status} intended)"
                    response.success()
                    return status, answer_json(response.content)
                else:
                    response.failure(f"status {status} {problem_code(response.content)}")
                    if not (retry_unavailable and status in (0, 502, 503, 504)):
                        raise Unanswered(f"{name}: {status} {(response.text or '')[:200]}")
                    failures += 1
                    retry = str(min(30, 2**failures))
            if time.time() + float(retry) > self.deadline:
                if status == 429:
                    raise RateLimited(f"{name}: still limited (429) at the deadline")
                raise Unanswered(f"{name}: still {status} at the deadline")
            gevent.sleep(min(float(retry), 10.0))

    def pause(self, seconds: Any, cap_s: float | None = None) -> None:
        """Waits as told, spread by +-20 % like the waiting page, so polls do not bunch."""
        wait = seconds if isinstance(seconds, int | float) else 2.0
        wait = min(max(float(wait), 0.5), cap_s or self.max_poll_s)
        gevent.sleep(wait * random.uniform(0.8, 1.2))  # noqa: S311 - jitter, not a secret

    # -- the steps --------------------------------------------------------------------------

    def edge_page(self, arrival: Arrival) -> None:
        # The edge sends a visitor with no Tier-1 pass to the waiting page.
        self.call("GET", f"/events/{self.event_id}", "GET /events/{id}", arrival, ok=(302,))
        self.call("GET", f"/vwr/{self.event_id}", "GET /vwr/{id} (waiting page)", arrival)

    def assign(self, arrival: Arrival, request_id: str) -> Any:
        """Takes a place; when the event asks for a proof of work (a ``pow_*`` problem),
        fetches a challenge, solves it and asks again, as the waiting page does."""
        body: dict[str, Any] = {"requestId": request_id}
        for _ in range(POW_ROUNDS + 1):
            status, placed = self.call(
                "POST",
                f"/vwr-api/vwr/assign/{self.event_id}",
                "POST /vwr-api/vwr/assign/{id}",
                arrival,
                body=body,
                ok=(200, 201),
                intended=(403,),
                retry_unavailable=True,
            )
            if status in (200, 201):
                return placed
            code = str((placed or {}).get("code", ""))
            if not code.startswith("pow_"):
                raise Unanswered(f"assign: {status} {code}")
            body["pow"] = self.prove_work(arrival)
        raise Unanswered("assign: the proof of work was refused every time")

    def prove_work(self, arrival: Arrival) -> dict[str, Any]:
        _, handed = self.call(
            "GET",
            f"/vwr-api/vwr/challenge/{self.event_id}",
            "GET /vwr-api/vwr/challenge/{id}",
            arrival,
            retry_unavailable=True,
        )
        started = time.time()
        counter = SOLVERS.solve(handed["challenge"], int(handed["bits"]))
        arrival.pow_solves += 1
        arrival.pow_solve_s += time.time() - started
        return {"challenge": handed["challenge"], "counter": counter}

    def tier1(self, arrival: Arrival) -> None:
        request_id = str(uuid.uuid4())
        placed = self.assign(arrival, request_id)
        arrival.tier1_position = int(placed["position"])
        # As the waiting page: every check, the first one included, when the room says.
        wait = placed.get("pollAfterSeconds") or 2
        while True:
            self.pause(wait)
            _, checked = self.call(
                "GET",
                f"/vwr-api/vwr/check/{self.event_id}/{request_id}",
                "GET /vwr-api/vwr/check/{id}/{rid}",
                arrival,
                retry_unavailable=True,
            )
            if checked.get("admitted"):
                self.cookies["urr-vwr-token"] = checked["token"]
                arrival.vwr_token = checked["token"]
                arrival.tier1_admitted_at = time.time()
                # Back where the visitor started: the edge now lets the page through.
                self.call("GET", f"/events/{self.event_id}", "GET /events/{id} (admitted)", arrival)
                return
            wait = checked.get("pollAfterSeconds")

    def login(self, arrival: Arrival, email: str, password: str) -> None:
        # AUTH allows 20 logins a minute per address: a 429 waits and retries (in ``call``).
        _, answer = self.call(
            "POST",
            "/api/v1/auth/login",
            "POST /api/v1/auth/login",
            arrival,
            body={"email": email, "password": password},
        )
        self.cookies["access_token"] = answer["access_token"]

    def tier2(self, arrival: Arrival) -> None:
        base = f"/api/v1/queue/{self.event_id}"
        _, answer = self.call(
            "POST", f"{base}/enter", "POST /api/v1/queue/{id}/enter", arrival, ok=(200, 201)
        )
        while answer.get("status") != "admitted":
            if arrival.tier2_position is None and answer.get("position") is not None:
                arrival.tier2_position = int(answer["position"])
            # An admitted session's clock runs from admission: look often (Redis is cheap).
            self.pause(answer.get("poll_after_seconds"), cap_s=TIER2_POLL_CAP_S)
            _, answer = self.call("GET", f"{base}/status", "GET /api/v1/queue/{id}/status", arrival)
        arrival.tier2_admitted_at = time.time()
        self.cookies["urr-entry-token"] = answer["entry_token"]
        arrival.entry_token = answer["entry_token"]

    def book(self, arrival: Arrival) -> None:
        arrival.first_ticket_call = time.time()
        _, seat_map = self.call(
            "GET", f"/api/v1/seats/{self.event_id}", "GET /api/v1/seats/{id}", arrival
        )
        arrival.last_ticket_ok = time.time()
        free = [s["seatId"] for s in seat_map["seats"] if s.get("state") == "free"]
        random.shuffle(free)
        for seat_id in free[:3]:
            status, _ = self.call(
                "POST",
                f"/api/v1/seats/{self.event_id}/{seat_id}/hold",
                "POST /api/v1/seats/{id}/{seat}/hold",
                arrival,
                expected=(409,),
            )
            if status == 200:
                arrival.last_ticket_ok = time.time()
                arrival.seat_id = seat_id
                break
        if arrival.seat_id is None:
            arrival.outcome = "sold_out"
            self.leave(arrival)
            return
        _, reserved = self.call(
            "POST",
            f"/api/v1/reservations/{self.event_id}",
            "POST /api/v1/reservations/{id}",
            arrival,
            body={"seatIds": [arrival.seat_id]},
            ok=(200, 201, 202),
            expected=(409,),
        )
        if not reserved or "reservationId" not in reserved:
            arrival.outcome = "declined"
            arrival.detail = problem_code(json.dumps(reserved or {}))
            self.leave(arrival)
            return
        arrival.last_ticket_ok = time.time()
        arrival.reservation_id = reserved["reservationId"]
        self.poll_outcome(arrival)

    def poll_outcome(self, arrival: Arrival) -> None:
        # The owner's read needs no entry token (the queue revokes it once the outcome is
        # final), so it does not count as holding a Tier-2 slot at the ticket service.
        path = f"/api/v1/events/{self.event_id}/reservations/{arrival.reservation_id}"
        while True:
            self.pause(2.0)
            _, answer = self.call(
                "GET", path, "GET /api/v1/events/{id}/reservations/{rid}", arrival
            )
            if answer.get("status") in FINAL:
                arrival.outcome = str(answer["status"])
                return

    def leave(self, arrival: Arrival) -> None:
        self.call(
            "POST",
            f"/api/v1/queue/{self.event_id}/leave",
            "POST /api/v1/queue/{id}/leave",
            arrival,
        )
