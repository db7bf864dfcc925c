"""What can go wrong talking to an upstream, as the proxy needs to tell it apart."""

from __future__ import annotations


class UpstreamError(Exception):
    """Base of every upstream client failure."""


class UpstreamConnectError(UpstreamError):
    """The TCP connection could not be opened (refused, unreachable, connect deadline)."""


class PoolTimeout(UpstreamError):
    """Every connection the upstream may have was busy for the whole pool-wait deadline."""


class UpstreamTimeout(UpstreamError):
    """No answer headers, or a silence in the answer body, past the read deadline."""


class UpstreamProtocolError(UpstreamError):
    """The upstream broke HTTP/1.1 or closed the connection before the answer was complete."""


class RequestBodyError(UpstreamError):
    """Reading the client's body failed; ``cause`` is what the body source raised."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(repr(cause))
        self.cause = cause
