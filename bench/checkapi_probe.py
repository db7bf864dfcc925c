"""Where a check request's time goes inside the server (``checkapi_latency.py --probe``).

Installed in the bench's server process only (wrappers around the listener's and the Redis
pipe's methods; nothing in the package changes), it timestamps each request's stages with
``perf_counter``:

* ``parse``    the read that completed the request -> its decision asked (httptools, the
               caller's credential, the head checks, the JSON and the field checks);
* ``to redis`` decision queued -> its batch written to the Redis socket (the pipeline's wait
               for the end of the pass, or the gathering window);
* ``redis``    batch written -> its reply read (Redis's work, the loopback, and how long the
               loop took to come back to the socket);
* ``reply->answer``  reply read -> the answer written to the client (the decision's steps run
               in place in the read of the reply: the limiter's, the check API's, the answer's
               bytes and its write);
* ``whole``    read -> answer written (answers decided without Redis too: the deny cache).

plus every garbage collection's pause (``gc.callbacks``) and how late a 1 ms ticker ran
(the loop's longest passes). The stamps cost ~1 µs each; the ticker ~1,000 wake-ups a second,
so compare probed runs with probed runs. Decisions are matched to batches in the order they
were queued (the pipeline writes them in that order), so the split stages assume one Redis
node and no refusal from the deny cache in between (those answers count in ``whole`` only).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from contextvars import Context
from typing import Any

_clock = time.perf_counter


class Probe:
    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {
            name: [] for name in ("parse", "to redis", "redis", "reply->answer", "whole")
        }
        self.gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.ticker_late: list[float] = []
        self.batch_sizes: list[int] = []
        self._gc_started = 0.0
        self._tick_due = 0.0
        self._recording = False
        #: Set while a Redis reply is read (``reply->answer``'s start).
        self._reply_at = 0.0
        #: The listener's last read time (shared with ``_wrap_listener``).
        self._read_at: list[float] | None = None

    # --- installation ----------------------------------------------------------------------

    def install(self, loop: asyncio.AbstractEventLoop) -> None:
        self._wrap_listener()
        self._wrap_pipeline()
        gc.callbacks.append(self._on_gc)
        self._loop = loop
        self._tick_due = loop.time() + 0.001
        loop.call_later(0.001, self._tick)

    def _wrap_listener(self) -> None:
        from urr_gateway import checkserver, http1

        probe = self
        stages = self.stages
        read_at: list[float] = [0.0]
        probe._read_at = read_at
        #: When each request in progress was read, by its answer slot.
        began: dict[int, float] = {}

        # The listener's own (plain checks' heads) in front of the shared layer's.
        original_received = checkserver._Connection.data_received

        def data_received(self: checkserver._Connection, data: bytes) -> None:
            read_at[0] = _clock()
            original_received(self, data)

        checkserver._Connection.data_received = data_received  # type: ignore[method-assign]

        original_soon = checkserver._Connection._answer_soon

        def answer_soon(
            self: checkserver._Connection,
            answer: http1.Answer,
            body: bytes,
            request_id: bytes,
            context: Context,
        ) -> None:
            began[id(answer)] = read_at[0]
            original_soon(self, answer, body, request_id, context)

        checkserver._Connection._answer_soon = answer_soon  # type: ignore[method-assign]

        original_answered = checkserver._Connection._answered

        def answered(
            self: checkserver._Connection,
            answer: http1.Answer,
            request_id: bytes,
            data: bytes | None,
            error: BaseException | None,
        ) -> None:
            original_answered(self, answer, request_id, data, error)
            done = _clock()
            first = began.pop(id(answer), None)
            if probe._recording and first is not None:
                stages["whole"].append(done - first)
                if probe._reply_at:
                    stages["reply->answer"].append(done - probe._reply_at)

        checkserver._Connection._answered = answered  # type: ignore[method-assign]

    def _wrap_pipeline(self) -> None:
        from urr_gateway.ratelimit import pipeline, resp

        probe = self
        stages = self.stages

        # The pipeline: when each command was queued, when its batch was written, when its
        # reply was read (in queue order: replies come in the order the commands went).
        asked: deque[float] = deque()
        original_put = pipeline._Node.put

        def put(
            self: pipeline._Node,
            command: bytes,
            waiter: resp.Waiter,
            load_script: bool | bytes = False,
            timed: bool = False,
            window_s: float | None = None,
        ) -> None:
            now = _clock()
            asked.append(now)
            if probe._recording and probe._read_at is not None:
                stages["parse"].append(now - probe._read_at[0])
            original_put(self, command, waiter, load_script, timed, window_s)

        pipeline._Node.put = put  # type: ignore[method-assign]

        in_flight: deque[tuple[float, float]] = deque()  # (asked, written) per command
        original_send = resp.RespPipe.send

        def send(self: Any, payload: bytes, waiters: list[Any]) -> None:
            written = _clock()
            commands = sum(1 for waiter in waiters if waiter is not None)
            probe.batch_sizes.append(commands)  # (cleared when the measured run starts)
            for _ in range(commands):
                first = asked.popleft() if asked else written
                in_flight.append((first, written))
            original_send(self, payload, waiters)

        resp.RespPipe.send = send  # type: ignore[method-assign]

        original_reply = resp.RespPipe.data_received

        def reply(self: Any, data: bytes) -> None:
            at = _clock()
            before = self.waiting
            # Answers written inside this read (the decisions' steps run in place) are
            # timed from it.
            probe._reply_at = at
            try:
                original_reply(self, data)
            finally:
                probe._reply_at = 0.0
            for _ in range(before - self.waiting):
                if not in_flight:
                    break
                first, written = in_flight.popleft()
                if probe._recording:
                    stages["to redis"].append(written - first)
                    stages["redis"].append(at - written)

        resp.RespPipe.data_received = reply  # type: ignore[method-assign]

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = _clock()
        elif self._recording:
            self.gc_pauses[info["generation"]].append(_clock() - self._gc_started)

    def _tick(self) -> None:
        now = self._loop.time()
        if self._recording:
            self.ticker_late.append(now - self._tick_due)
        self._tick_due = now + 0.001
        self._loop.call_later(0.001, self._tick)

    # --- recording -------------------------------------------------------------------------

    def start(self) -> None:
        for values in self.stages.values():
            values.clear()
        for pauses in self.gc_pauses.values():
            pauses.clear()
        self.ticker_late.clear()
        self.batch_sizes.clear()
        self._recording = True

    def report(self) -> str:
        self._recording = False
        lines = ["  inside the server, per request (ms):   p50     p99   p99.9     max   count"]
        for name, values in self.stages.items():
            lines.append("    " + _row(name, values))
        for generation, pauses in self.gc_pauses.items():
            lines.append("    " + _row(f"gc gen{generation} pause", pauses))
        lines.append("    " + _row("1 ms ticker late", self.ticker_late))
        sizes = sorted(self.batch_sizes)
        if sizes:
            lines.append(
                f"    Redis batches {len(sizes)}, commands per batch p50 "
                f"{sizes[len(sizes) // 2]} max {sizes[-1]}"
            )
        return "\n".join(lines)


def _row(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<22} {'-':>7} {'-':>7} {'-':>7} {'-':>7} {0:7d}"
    ordered = sorted(values)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))] * 1000

    return (
        f"{name:<22} {at(0.5):7.3f} {at(0.99):7.3f} {at(0.999):7.3f} {ordered[-1] * 1000:7.3f} "
        f"{len(ordered):7d}"
    )
