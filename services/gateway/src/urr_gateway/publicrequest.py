"""A request as the public protocol listener (``publicserver``) hands it to the gateway's
pipeline: what ingress, the filters, the proxy and the problem answers read of an aiohttp
``web.Request`` (method, paths, headers, peer, cookies, per-request state, the body stream),
and nothing else. It stands in for ``web.Request`` (the pipeline's steps are typed with it),
so every step runs the same code under both servers.

The body is a ``RequestBody``: pieces as the parser hands them over, read by the proxy with
``readany`` as aiohttp's ``StreamReader`` is read. Backpressure: once more than
``BODY_HIGH_WATER`` bytes wait unread, the connection stops reading the client; it reads
again when the proxy has taken them below ``BODY_LOW_WATER``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import unquote

from multidict import CIMultiDictProxy

from urr_gateway.cookieheader import parse_cookie_header

if TYPE_CHECKING:
    from yarl import URL

BODY_HIGH_WATER = 256 * 1024
BODY_LOW_WATER = 64 * 1024
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class BodyOwner(Protocol):
    """What a body tells its connection (implemented by the listener's connection; a
    protocol, not a base class: mypyc's native classes have one base)."""

    def body_buffered(self, delta: int) -> None:
        raise NotImplementedError

    def write_raw(self, data: bytes) -> None:
        raise NotImplementedError


class RequestBody:
    """One request's body as it arrives (``readany`` is what the proxy calls)."""

    __slots__ = ("_buffered", "_chunks", "_continue", "_done", "_error", "_owner", "_waiter")

    def __init__(self, owner: BodyOwner, *, expect_continue: bool) -> None:
        self._owner = owner
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future[None] | None = None
        #: ``Expect: 100-continue``: the interim answer goes out when the body is first read,
        #: so a request refused before its body is never invited to send it.
        self._continue = expect_continue

    @property
    def done(self) -> bool:
        return self._done

    async def readany(self) -> bytes:
        """The next piece of the body; ``b""`` at its end."""
        if self._continue:
            self._continue = False
            if not self._done:
                self._owner.write_raw(_CONTINUE)
        while not self._chunks:
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._owner.body_buffered(-len(chunk))
        return chunk

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self._owner.body_buffered(len(chunk))
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if self._done:
            return
        self._error = error
        self._done = True
        self.discard()
        self._wake()

    def discard(self) -> None:
        """Nobody will read the rest: drop what is buffered (and stop counting it)."""
        if self._buffered:
            self._owner.body_buffered(-self._buffered)
        self._chunks.clear()
        self._buffered = 0
        self._done = True

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class GatewayRequest:
    """The parts of ``web.Request`` the gateway's pipeline and proxy read."""

    __slots__ = (
        "_cookies",
        "_state",
        "content",
        "content_length",
        "headers",
        "host",
        "method",
        "path",
        "raw_path",
        "remote",
        "scheme",
        "version",
    )

    def __init__(
        self,
        method: str,
        raw_path: str,
        headers: CIMultiDictProxy[str],
        remote: str | None,
        host: str,
        content: RequestBody | None,
        content_length: int | None,
    ) -> None:
        self.method = method
        self.raw_path = raw_path
        path = raw_path.partition("?")[0]
        self.path = unquote(path) if "%" in path else path
        self.headers = headers
        self.remote = remote
        self.scheme = "http"
        self.host = host
        self.content = content
        self.content_length = content_length
        self._state: dict[Any, Any] = {}
        self._cookies: Mapping[str, str] | None = None

    @property
    def body_exists(self) -> bool:
        return self.content is not None

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def __contains__(self, key: Any) -> bool:
        return key in self._state

    @property
    def cookies(self) -> Mapping[str, str]:
        """As aiohttp parses them (``cookieheader``: its rules, held to them by a differential
        fuzz), once per request."""
        if self._cookies is None:
            self._cookies = parse_cookie_header(self.headers.get("Cookie", ""))
        return self._cookies

    def clone(self, *, rel_url: URL) -> GatewayRequest:
        """Ingress's re-issue with the canonical path: the state is shared, as aiohttp's
        clone copies it; here the same object simply takes the new path."""
        self.raw_path = rel_url.raw_path_qs
        self.path = rel_url.path
        return self
