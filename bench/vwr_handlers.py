"""Warm handler time per call (no AWS I/O) and DynamoDB calls per assign and per check.

    uv run python bench/vwr_handlers.py [--calls 2000]

Part 1 swaps the DynamoDB adapter for an in-memory one with the same methods, so the figure is
the handler's own work per warm invocation: event checks, powertools routing, JSON, token
signing or verification. Part 2 runs the real adapter against a private moto server and counts
the DynamoDB operations each request makes (botocore's ``before-call`` hook).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from urr_common.settings import load_settings
from urr_common.tokens import KeySet
from urr_devstack.procs import free_port, moto_server
from urr_vwr_lambda import advancer, tier1
from urr_vwr_lambda.api import make_handler
from urr_vwr_lambda.edge import EdgeVerifier
from urr_vwr_lambda.edge_config import EdgeConfigSource, build_document
from urr_vwr_lambda.gates.guard import Gates
from urr_vwr_lambda.gates.store import GateConfig
from urr_vwr_lambda.queueing import PositionRow
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import VwrSettings
from urr_vwr_lambda.store import EventState, Place, UserClaim
from urr_vwr_lambda.tables import ensure_tables

EVENTS = Path(__file__).resolve().parents[1] / "services" / "vwr_lambda" / "tests" / "events"


class NoGates:
    """The gate settings of an event with nothing to enforce (no I/O)."""

    def get_config(self, event_id: str) -> GateConfig:
        return GateConfig(event_id, 1, 0, False, None)


class MemoryStore:
    """The ``VwrStore`` methods the API uses, on dictionaries (no I/O)."""

    def __init__(self) -> None:
        self.events: dict[str, EventState] = {}
        self.places: dict[tuple[str, str], Place] = {}

    def get_event(self, event_id: str, *, consistent: bool = False) -> EventState | None:
        return self.events.get(event_id)

    def read_assignment(
        self, event_id: str, request_id: str, user_id: str | None
    ) -> tuple[EventState | None, Place | None, UserClaim | None]:
        return self.events.get(event_id), self.places.get((event_id, request_id)), None

    def reserve_position(self, event_id: str, *, now_ms: int) -> tuple[int, int]:
        state = self.events[event_id]
        self.events[event_id] = replace(state, next_position=state.next_position + 1)
        return state.next_position + 1, state.epoch

    def reserve_position_beside(self, event_id: str, *, now_ms: int) -> Future[tuple[int, int]]:
        taken: Future[tuple[int, int]] = Future()
        taken.set_result(self.reserve_position(event_id, now_ms=now_ms))
        return taken

    def put_place(self, event_id: str, request_id: str, **fields: Any) -> bool:
        self.places[(event_id, request_id)] = Place(
            event_id,
            request_id,
            fields["position"],
            fields["epoch"],
            fields["user_id"],
            fields["now_s"],
            fields["now_s"] + 86_400,
            False,
            None,
            None,
        )
        return True

    def get_place(self, event_id: str, request_id: str) -> Place | None:
        return self.places.get((event_id, request_id))

    def read_check(self, event_id: str, request_id: str) -> tuple[EventState | None, Place | None]:
        return self.events.get(event_id), self.places.get((event_id, request_id))

    def touch(self, place: Place, *, now_s: int) -> bool:
        return True

    def record_admission(self, place: Place, *, token: str, token_exp: int, now_s: int) -> Place:
        stored = replace(place, token=token, token_exp=token_exp)
        self.places[(place.event_id, place.request_id)] = stored
        return stored

    def places_above(self, *args: Any, **kwargs: Any) -> list[PositionRow]:
        return []


def event(name: str, **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    data.update(changes)
    return data


def per_call_us(fn: Callable[[], Any], calls: int) -> tuple[float, float]:
    for _ in range(min(200, calls)):
        fn()
    samples = []
    for _ in range(5):
        started = time.perf_counter()
        for _ in range(calls // 5):
            fn()
        samples.append((time.perf_counter() - started) / (calls // 5) * 1e6)
    return statistics.median(samples), min(samples)


def settings_for(tmp: Path, endpoint: str | None) -> VwrSettings:
    keys = tmp / "keys"
    return load_settings(
        VwrSettings,
        environment="test",
        aws={"endpoint_url": endpoint, "access_key_id": "x", "secret_access_key": "x"},
        vwr_tokens={"private_key_file": keys / "local-1.pem"},
        vwr_trust={"public_key_files": [keys / "public" / "local-1.pem"]},
        access_trust={"jwks_url": None, "public_key_files": []},
        edge_config={"target": str(tmp / "edge.json")},
        tables={"counters": f"c-{uuid.uuid4().hex[:8]}", "positions": f"p-{uuid.uuid4().hex[:8]}"},
    )


def warm_handler(tmp: Path) -> tuple[VwrRuntime, MemoryStore, Callable[..., Any]]:
    """A warm handler on the in-memory store, its runtime and its store (also vwr_emf_line)."""
    import os

    os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
    os.environ["POWERTOOLS_LOG_LEVEL"] = "WARNING"
    runtime = VwrRuntime(settings_for(tmp, None))
    store = MemoryStore()
    runtime.__dict__["store"] = store
    # The gates read an event's settings once per container copy; with none to enforce (cap
    # off, no codes) an assign goes straight on, which is the handler work measured here.
    runtime.__dict__["gates"] = Gates(
        runtime.settings.gates,
        NoGates(),  # type: ignore[arg-type]
        origin=None,
        retry_after_s=120,
    )
    store.events["evt-1"] = EventState("evt-1", True, 0, 0, 500, 0, 1, 50.0)
    handler = make_handler(lambda: runtime)
    return runtime, store, handler


def warm(calls: int, tmp: Path) -> None:
    runtime, store, handler = warm_handler(tmp)
    base_assign = event("rest_assign.json")

    def assign_new() -> None:
        e = copy.deepcopy(base_assign)
        e["body"] = json.dumps({"requestId": str(uuid.uuid4())})
        handler(e, None)

    waiting_id = str(uuid.uuid4())
    admitted_id = str(uuid.uuid4())
    for rid in (admitted_id, waiting_id):
        e = copy.deepcopy(base_assign)
        e["body"] = json.dumps({"requestId": rid})
        handler(e, None)
    store.events["evt-1"] = replace(store.events["evt-1"], serving_counter=1)
    check_waiting = event("rest_check.json", path=f"/vwr/check/evt-1/{waiting_id}")
    check_admitted = event("rest_check.json", path=f"/vwr/check/evt-1/{admitted_id}")
    status = event("rest_status.json")
    etag = json.loads(json.dumps(handler(status, None)["multiValueHeaders"]))["ETag"][0]
    status_304 = event("rest_status.json", headers={"If-None-Match": etag})

    key = runtime.signing_key
    doc = tmp / "edge-bench.json"
    doc.write_bytes(
        build_document(
            KeySet([key.verification_key()]),
            ["evt-1"],
            max_age_s=15,
            issuer="urr-vwr",
            audience="urr-vwr",
        )
    )
    edge = EdgeVerifier(EdgeConfigSource(str(doc)))
    token = tier1.issue(
        runtime.signer, event_id="evt-1", request_id=admitted_id, position=1, user_id=None
    )
    cf = event("cloudfront_viewer_request.json")
    with_token = copy.deepcopy(cf)
    with_token["Records"][0]["cf"]["request"]["headers"]["cookie"] = [
        {"key": "Cookie", "value": f"urr-vwr-token={token}"}
    ]
    ungated = copy.deepcopy(cf)
    ungated["Records"][0]["cf"]["request"]["uri"] = "/api/v1/auth/login"

    cases: list[tuple[str, Callable[[], Any]]] = [
        ("api: assign (new place)", assign_new),
        ("api: check (waiting)", lambda: handler(check_waiting, None)),
        ("api: check (admitted, stored token)", lambda: handler(check_admitted, None)),
        ("api: status 200", lambda: handler(status, None)),
        ("api: status 304", lambda: handler(status_304, None)),
        ("edge: gated page, valid token", lambda: edge(copy.deepcopy(with_token))),
        ("edge: gated page, no token (302)", lambda: edge(copy.deepcopy(cf))),
        ("edge: ungated path", lambda: edge(copy.deepcopy(ungated))),
    ]
    print(f"\nWarm handler time per call, in-memory store ({calls} calls, 5 batches)")
    print(f"{'case':<40} {'median us':>10} {'best us':>9}")
    for name, fn in cases:
        median, best = per_call_us(fn, calls)
        print(f"{name:<40} {median:>10.1f} {best:>9.1f}")
    # Signing is the dominant cost of a first admission: show it alone.
    median, best = per_call_us(
        lambda: tier1.issue(runtime.signer, event_id="e", request_id="r", position=1, user_id=None),
        calls,
    )
    print(f"{'(ES256 sign, for reference)':<40} {median:>10.1f} {best:>9.1f}")


class _Capacity(BaseHTTPRequestHandler):
    """Tier 2's capacity feed, always roomy (the bench counts DynamoDB calls, not Tier 2)."""

    def do_GET(self) -> None:
        body = b'{"waiting": 0, "admitted": 0, "capacity": 100000, "admit_per_second": 100}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def dynamodb_calls(tmp: Path) -> None:
    import os

    port = free_port()
    server = moto_server(port, tmp / "moto.log")
    server.start()
    capacity = ThreadingHTTPServer(("127.0.0.1", 0), _Capacity)
    threading.Thread(target=capacity.serve_forever, daemon=True).start()
    try:
        settings = settings_for(tmp, f"http://127.0.0.1:{port}")
        settings = settings.model_copy(
            update={
                "queue": settings.queue.model_copy(
                    update={"url": f"http://127.0.0.1:{capacity.server_address[1]}"}
                )
            }
        )
        runtime = VwrRuntime(settings)
        ensure_tables(runtime.dynamodb, settings.tables)
        operations: list[str] = []
        runtime.dynamodb.meta.events.register(
            "before-call.dynamodb.*", lambda model, **_: operations.append(model.name)
        )
        os.environ["POWERTOOLS_METRICS_DISABLED"] = "true"
        runtime.store.put_event("evt-1", is_active=True, batch_size=10, now_ms=0)
        handler = make_handler(lambda: runtime)

        def answered(answer: dict[str, Any]) -> str:
            admitted = json.loads(answer["body"]).get("admitted")
            return {True: "admitted", False: "waiting", None: ""}[admitted]

        def count(name: str, e: dict[str, Any]) -> None:
            operations.clear()
            answer = handler(e, None)
            names = ", ".join(operations)
            code = f"{answer['statusCode']} {answered(answer)}"
            print(f"{name:<44} {code:>14} {len(operations):>6}  {names}")

        rid = str(uuid.uuid4())
        assign = event("rest_assign.json", body=json.dumps({"requestId": rid}))
        print("\nDynamoDB calls per request (real adapter, moto server)")
        print(f"{'request':<44} {'answer':>14} {'calls':>6}  operations")
        count("assign, new place (anonymous, address cap)", assign)
        count("assign, same requestId again", assign)
        other = event("rest_assign.json", body=json.dumps({"requestId": str(uuid.uuid4())}))
        count("assign, 2nd place of the address", other)
        third = event("rest_assign.json", body=json.dumps({"requestId": str(uuid.uuid4())}))
        count("assign, 3rd place of the address (429)", third)
        runtime.gates.store.set_config("evt-1", places_per_client=0, access_code_required=None)
        runtime.gates.forget("evt-1")
        fourth = event("rest_assign.json", body=json.dumps({"requestId": str(uuid.uuid4())}))
        count("assign, new place (cap off, settings re-read)", fourth)
        fifth = event("rest_assign.json", body=json.dumps({"requestId": str(uuid.uuid4())}))
        count("assign, new place (cap off, settings cached)", fifth)
        check = event("rest_check.json", path=f"/vwr/check/evt-1/{rid}")
        count("check, waiting (lastSeen fresh: no write)", check)
        count("check, waiting (counters copy < 1 s old)", check)
        runtime.clock = lambda: time.time() + 60
        # The counters copy lives for a second of monotonic time: drop it so that each case
        # below shows the reads it makes once the copy is stale.
        runtime.event_cache.forget("evt-1")
        count("check, waiting (records lastSeen)", check)
        state = runtime.store.get_event("evt-1", consistent=True)
        assert state is not None
        runtime.store.advance_to(
            state,
            serving_counter=1,
            admit_rate=None,
            now_ms=0,
        )
        runtime.event_cache.forget("evt-1")
        count("check, admitted (first: signs and stores)", check)
        count("check, admitted (again: same token)", check)
        count("status", event("rest_status.json"))
        for _ in range(5):
            e = event("rest_assign.json", body=json.dumps({"requestId": str(uuid.uuid4())}))
            handler(e, None)
        operations.clear()
        advancer.run_cycle(runtime, interval_s=10)
        names = ", ".join(operations)
        label = "advancer cycle, 1 active event, 5 waiting"
        print(f"{label:<44} {'-':>14} {len(operations):>6}  {names}")
        runtime.dynamodb.close()
    finally:
        capacity.shutdown()
        capacity.server_close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        warm(args.calls, Path(tmp))
        dynamodb_calls(Path(tmp))


if __name__ == "__main__":
    main()
