"""The API Gateway emulator's warm "containers": where and in what order invocations run.

Each container is one worker process running one invocation at a time, as a Lambda
container does (powertools' resolver requires it). Like Lambda, no call waits while a
container is idle: calls queue only when every container is busy. Two choices are the
emulator's own:

- affinity: among the idle containers, a call goes to the one its request id hashes to, so
  that container's copy of the place (``urr_vwr_lambda.warm``) usually answers the check.
  Lambda does not promise this; it is a preference, never a wait: when that container is busy
  another one answers and reads the place from DynamoDB once (an earlier version queued
  behind the busy one, and in a crowd a check waited out whole assigns while others idled);
- reads first: when every container is busy, a waiting check runs before a waiting assign. A
  check is mostly answered from the copies in a few milliseconds, an assign makes three
  or four DynamoDB calls; in a crowd, checks stuck behind assigns told waiters of their turn late.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LoopExecutor(Protocol):
    """A container that answers on the event loop itself (``pipe_container.LoopContainer``)."""

    def call(self, fn: Callable[..., Any], /, *args: Any) -> asyncio.Future[Any]: ...

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...


@dataclass(slots=True)
class Job:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    key: str | None
    read: bool
    queued_at: float


def preferred_container(key: str | None, count: int) -> int | None:
    """The container a request id hashes to (None: no request id, any will do)."""
    return None if key is None else zlib.crc32(key.encode()) % count


def choose_idle(idle: Sequence[int], preferred: int | None, turn: int) -> int:
    """The idle container a call goes to: the preferred one if idle, else the next in turn."""
    if preferred is not None and preferred in idle:
        return preferred
    return idle[turn % len(idle)]


class Containers:
    """The containers, fed from one queue (reads first) whenever one of them is idle."""

    def __init__(
        self,
        executors: Sequence[Executor | LoopExecutor],
        *,
        observe: Callable[[bool, float, float], None] | None = None,
    ) -> None:
        """``observe(read, waited_s, ran_s)`` hears of every finished invocation."""
        self.executors = list(executors)
        # Checked once: an isinstance of a runtime protocol per call costs microseconds.
        self._on_loop = [isinstance(e, LoopExecutor) for e in self.executors]
        self._observe = observe
        self._idle = list(range(len(self.executors)))
        self._reads: deque[Job] = deque()
        self._writes: deque[Job] = deque()
        self._turn = 0

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def warm(self, fn: Callable[..., Any], *args: Any) -> None:
        """Run ``fn`` once in every container, before any call (like provisioned concurrency)."""
        await asyncio.gather(*(self._start(i, fn, args) for i in range(len(self.executors))))

    def _start(
        self, index: int, fn: Callable[..., Any], args: tuple[Any, ...]
    ) -> asyncio.Future[Any]:
        executor = self.executors[index]
        if self._on_loop[index]:
            return executor.call(fn, *args)  # type: ignore[union-attr]
        return asyncio.get_running_loop().run_in_executor(executor, fn, *args)  # type: ignore[arg-type]

    async def invoke(self, fn: Callable[..., Any], *args: Any, key: str | None, read: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        job = Job(fn, args, future, key, read, time.monotonic())
        (self._reads if read else self._writes).append(job)
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        while self._idle and (self._reads or self._writes):
            job = (self._reads or self._writes).popleft()
            if job.future.done():  # the caller went away while it waited: nothing to run
                continue
            self._turn += 1
            index = choose_idle(
                self._idle, preferred_container(job.key, len(self.executors)), self._turn
            )
            self._idle.remove(index)
            self._run(index, job)

    def _run(self, index: int, job: Job) -> None:
        started = time.monotonic()
        running = self._start(index, job.fn, job.args)

        def finished(done: asyncio.Future[Any]) -> None:
            self._idle.append(index)
            if self._observe is not None:
                self._observe(job.read, started - job.queued_at, time.monotonic() - started)
            # The caller may have gone (a dropped connection cancels its handler): the
            # invocation still ran, as it would in AWS; only its answer is dropped.
            if not job.future.done():
                if done.exception() is not None:
                    job.future.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    job.future.set_result(done.result())
            self._dispatch()

        running.add_done_callback(finished)

    def shutdown(self) -> None:
        for executor in self.executors:
            executor.shutdown(wait=True, cancel_futures=True)


_CHECK_PATH = re.compile(r"^/vwr/check/[^/]+/([^/]+)$")


def sticky_key(path: str, body: bytes) -> str | None:
    """The request id a call is about: from a check's path or an assign's JSON body."""
    match = _CHECK_PATH.fullmatch(path)
    if match:
        return match.group(1)
    if path.startswith("/vwr/assign/") and body:
        try:
            request_id = json.loads(body).get("requestId")
        except (ValueError, AttributeError, RecursionError):
            return None
        return request_id if isinstance(request_id, str) else None
    return None
