"""Where a check request's time goes inside the server (``checkapi_latency.py --probe``).

Installed in the bench's server process only (wrappers around the listener's and the Redis
pipe's methods; nothing in the package changes), it timestamps each request's stages with
``perf_counter``:

* ``parse``    the read that completed the request -> its task created (httptools, the
               caller's credential, the head checks);
* ``queue``    task created -> task first runs (the event loop's queue: everything else
               due in that pass runs first);
* ``decide``   task runs -> answer bytes ready (JSON, the limiter, the Redis round trip;
               which the next two lines split);
* ``to redis`` decision asked -> its batch written to the Redis socket (the pipeline's wait
               for the end of the pass, or the window);
* ``redis``    batch written -> its reply read (Redis's work, the loopback, and how long the
               loop took to come back to the socket);
* ``reply->answer``  reply read -> the resumed task's step over (the loop's pass back to it,
               the answer's JSON and its write to the client);
* ``whole``    read -> answer written.

plus every garbage collection's pause (``gc.callbacks``) and how late a 1 ms ticker ran
(the loop's longest passes). The stamps cost ~1 µs each; the ticker ~1,000 wake-ups a second,
so compare probed runs with probed runs.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import deque
from typing import Any

_clock = time.perf_counter


class Probe:
    def __init__(self) -> None:
        self.stages: dict[str, list[float]] = {
            name: []
            for name in ("parse", "queue", "decide", "to redis", "redis", "reply->answer", "whole")
        }
        self.gc_pauses: dict[int, list[float]] = {0: [], 1: [], 2: []}
        self.ticker_late: list[float] = []
        self.batch_sizes: list[int] = []
        self._gc_started = 0.0
        self._tick_due = 0.0
        self._recording = False

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

        original_received = http1.Http1Connection.data_received

        def data_received(self: Any, data: bytes) -> None:
            read_at[0] = _clock()
            original_received(self, data)

        http1.Http1Connection.data_received = data_received  # type: ignore[method-assign]

        original_answer = checkserver._Connection._answer

        def answer(self: Any, slot: Any, body: bytes, request_id: bytes) -> Any:
            created = _clock()
            began = read_at[0]

            async def timed() -> None:
                ran = _clock()
                await original_answer(self, slot, body, request_id)
                done = _clock()
                if probe._recording:
                    stages["parse"].append(created - began)
                    stages["queue"].append(ran - created)
                    stages["decide"].append(done - ran)
                    stages["whole"].append(done - began)

            return timed()

        checkserver._Connection._answer = answer  # type: ignore[method-assign,assignment]

    def _wrap_pipeline(self) -> None:
        from urr_gateway.ratelimit import pipeline, resp

        probe = self
        stages = self.stages

        # The pipeline: when each command was asked for, when its batch was written, when
        # its reply was read, when its caller resumed.
        asked: deque[float] = deque()
        original_submit = pipeline._Node.submit

        def submit(self: Any, command: bytes, **kwargs: Any) -> Any:
            asked.append(_clock())
            return original_submit(self, command, **kwargs)

        pipeline._Node.submit = submit  # type: ignore[method-assign]

        in_flight: deque[tuple[float, float]] = deque()  # (asked, written) per command
        original_send = resp.RespPipe.send

        def send(self: Any, payload: bytes, waiters: list[Any]) -> None:
            written = _clock()
            commands = sum(1 for waiter in waiters if waiter is not None)
            probe.batch_sizes.append(commands)  # (cleared when the measured run starts)
            for _ in range(commands):
                first = asked.popleft() if asked else written
                in_flight.append((first, written))
            for waiter in waiters:
                if waiter is not None:
                    waiter.add_done_callback(_resumed_marker)
            original_send(self, payload, waiters)

        resp.RespPipe.send = send  # type: ignore[method-assign]

        replied: deque[float] = deque()
        original_reply = resp.RespPipe.data_received

        def reply(self: Any, data: bytes) -> None:
            at = _clock()
            before = self.waiting
            original_reply(self, data)
            for _ in range(before - self.waiting):
                if not in_flight:
                    break
                first, written = in_flight.popleft()
                replied.append(at)
                stages["to redis"].append(written - first)
                stages["redis"].append(at - written)

        resp.RespPipe.data_received = reply  # type: ignore[method-assign]

        def _resumed_marker(future: Any) -> None:
            # Added after the caller's own wake-up, so it runs once the caller's step (the
            # answer built and written) is over.
            if replied:
                stages["reply->answer"].append(_clock() - replied.popleft())

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
