"""The proxy's own upstream HTTP/1.1 client (pooled keep-alive connections, llhttp parser)."""

from __future__ import annotations

from urr_gateway.upstream.client import InvalidHeader, PoolLimits, UpstreamClient, request_head
from urr_gateway.upstream.connection import UpstreamResponse
from urr_gateway.upstream.errors import (
    PoolTimeout,
    RequestBodyError,
    UpstreamConnectError,
    UpstreamError,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from urr_gateway.upstream.pool import ConnectionPool

__all__ = [
    "ConnectionPool",
    "InvalidHeader",
    "PoolLimits",
    "PoolTimeout",
    "RequestBodyError",
    "UpstreamClient",
    "UpstreamConnectError",
    "UpstreamError",
    "UpstreamProtocolError",
    "UpstreamResponse",
    "UpstreamTimeout",
    "request_head",
]
