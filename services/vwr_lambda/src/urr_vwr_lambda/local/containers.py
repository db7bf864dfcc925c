"""The API Gateway emulator's warm "containers": where and in what order invocations run.

Each container is one worker process running one invocation at a time, as a Lambda
container does (powertools' resolver requires it). Two choices are the emulator's own:

- affinity: a waiter's calls go to the container that saw its request id before, so that
  container's copy of the place (``urr_vwr_lambda.warm``) answers the check. Lambda does not
  promise this; locally it keeps a crowd's checks within what one moto process can serve;
- reads first: a waiting check runs before a waiting assign. A check is mostly answered from
  the copies in a few milliseconds, an assign makes four DynamoDB calls; in a crowd, checks
  stuck behind assigns told waiters of their turn late.
"""

from __future__ import annotations

import asyncio
import json
import re
import zlib
from collections import deque
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any

Job = tuple[Callable[..., Any], tuple[Any, ...], "asyncio.Future[Any]"]


class Container:
    """One executor fed one invocation at a time, reads before writes."""

    def __init__(self, executor: Executor) -> None:
        self.executor = executor
        self._reads: deque[Job] = deque()
        self._writes: deque[Job] = deque()
        self._busy = False

    async def invoke(self, fn: Callable[..., Any], *args: Any, read: bool) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        (self._reads if read else self._writes).append((fn, args, future))
        self._next()
        return await future

    def _next(self) -> None:
        if self._busy:
            return
        queue = self._reads or self._writes
        if not queue:
            return
        fn, args, future = queue.popleft()
        self._busy = True
        running = asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

        def finished(done: asyncio.Future[Any]) -> None:
            self._busy = False
            # The caller may have gone (a dropped connection cancels its handler): the
            # invocation still ran, as it would in AWS; only its answer is dropped.
            if not future.done():
                if done.exception() is not None:
                    future.set_exception(done.exception())  # type: ignore[arg-type]
                else:
                    future.set_result(done.result())
            self._next()

        running.add_done_callback(finished)


class Containers:
    """The containers, picked by request id (affinity) or in turn."""

    def __init__(self, executors: list[Executor]) -> None:
        self.containers = [Container(executor) for executor in executors]
        self._turn = 0

    def pick(self, key: str | None) -> Container:
        if key is not None:
            return self.containers[zlib.crc32(key.encode()) % len(self.containers)]
        self._turn = (self._turn + 1) % len(self.containers)
        return self.containers[self._turn]

    def shutdown(self) -> None:
        for container in self.containers:
            container.executor.shutdown(wait=True, cancel_futures=True)


_CHECK_PATH = re.compile(r"^/vwr/check/[^/]+/([^/]+)$")


def sticky_key(path: str, body: bytes) -> str | None:
    """The request id a call is about: from a check's path or an assign's JSON body."""
    match = _CHECK_PATH.match(path)
    if match:
        return match.group(1)
    if path.startswith("/vwr/assign/") and body:
        try:
            request_id = json.loads(body).get("requestId")
        except (ValueError, AttributeError, RecursionError):
            return None
        return request_id if isinstance(request_id, str) else None
    return None
