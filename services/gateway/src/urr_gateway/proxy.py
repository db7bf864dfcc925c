"""The reverse proxy: the handler behind every filter.

One shared ``ClientSession`` for all upstreams (no cookie jar, no decompression: bytes pass
through as the upstream wrote them). Request and response bodies are streamed chunk by chunk,
so a 10 MB upload or download costs the gateway one buffer, not 10 MB. Small answers with a
known length (the common case) are read in one piece, which is cheaper than streaming.
Redirects are passed to the client, never followed.

Failures before the answer started become problems: connect refused or timed out -> 502
``upstream_unavailable``; no answer within the read timeout -> 504 ``upstream_timeout``; an
upstream that breaks the protocol -> 502 ``upstream_bad_response``. A failure after the
answer started streaming can only be signalled by cutting the connection, which is done.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping

import aiohttp
from aiohttp import web
from yarl import URL

from urr_common.logs import get_logger
from urr_common.problems import NotFound, PayloadTooLarge, ProblemError
from urr_gateway.forwarding import downstream_response_headers
from urr_gateway.ingress import FORWARD_HEADERS, NORMALISED_PATH, RAW_QUERY
from urr_gateway.metrics import GatewayMetrics
from urr_gateway.routing import ROUTE, Upstream
from urr_gateway.settings import GatewaySettings

_LOG = get_logger(__name__)

#: Answers up to this size with a known length are read whole instead of streamed.
_SMALL_BODY_BYTES = 64 * 1024
_CHUNK_BYTES = 64 * 1024
_SKIP_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding", "Content-Type")
_NO_BODY_STATUSES = frozenset({204, 304})


class BadGateway(ProblemError):
    status = 502
    default_code = "upstream_unavailable"


class GatewayTimeout(ProblemError):
    status = 504
    default_code = "upstream_timeout"


class _BodyTooLarge(Exception):
    """The client streamed more than the limit (raised inside the upload)."""


def open_upstream_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The one client session every upstream call (and JWKS fetch) shares."""
    proxy = settings.proxy
    connector = aiohttp.TCPConnector(
        limit=proxy.max_connections,
        limit_per_host=proxy.max_connections_per_host,
        keepalive_timeout=proxy.keepalive_timeout_s,
        ttl_dns_cache=60,
    )
    return aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=_SKIP_AUTO_HEADERS,
        timeout=aiohttp.ClientTimeout(
            total=None, sock_connect=proxy.connect_timeout_s, sock_read=proxy.read_timeout_s
        ),
        trust_env=False,
        read_bufsize=_CHUNK_BYTES,
    )


class UpstreamProxy:
    def __init__(
        self,
        upstreams: Mapping[Upstream, str],
        session: Callable[[], aiohttp.ClientSession],
        max_body_bytes: int,
        metrics: GatewayMetrics,
    ) -> None:
        self._upstreams = dict(upstreams)
        self._session = session
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics

    async def handle(self, request: web.Request) -> web.StreamResponse:
        match = request.get(ROUTE)
        if match is None or match.route.upstream is None:
            raise NotFound("no API route matches this path", code="route_not_found")
        upstream = match.route.upstream
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise PayloadTooLarge(
                f"the request body exceeds {self._max_body_bytes} bytes", code="body_too_large"
            )
        query = request[RAW_QUERY]
        target = self._upstreams[upstream] + request[NORMALISED_PATH].raw
        url = URL(f"{target}?{query}" if query else target, encoded=True)
        body = self._stream_request_body(request) if request.body_exists else None
        try:
            async with self._session().request(
                request.method,
                url,
                headers=request[FORWARD_HEADERS],
                data=body,
                allow_redirects=False,
            ) as answer:
                return await self._relay(request, answer, upstream)
        except _BodyTooLarge as exc:
            raise PayloadTooLarge(
                f"the request body exceeds {self._max_body_bytes} bytes", code="body_too_large"
            ) from exc
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            self._metrics.upstream_errors.labels(upstream, "connect").inc()
            raise BadGateway(f"the {upstream} service cannot be reached") from exc
        except (aiohttp.ServerTimeoutError, TimeoutError) as exc:
            self._metrics.upstream_errors.labels(upstream, "timeout").inc()
            raise GatewayTimeout(f"the {upstream} service did not answer in time") from exc
        except aiohttp.ClientError as exc:
            cause = exc.__cause__ or exc.__context__
            if isinstance(cause, _BodyTooLarge):
                raise PayloadTooLarge(
                    f"the request body exceeds {self._max_body_bytes} bytes",
                    code="body_too_large",
                ) from exc
            self._metrics.upstream_errors.labels(upstream, "protocol").inc()
            raise BadGateway(
                f"the {upstream} service answered badly", code="upstream_bad_response"
            ) from exc

    async def _stream_request_body(self, request: web.Request) -> AsyncIterator[bytes]:
        received = 0
        async for chunk in request.content.iter_chunked(_CHUNK_BYTES):
            received += len(chunk)
            if received > self._max_body_bytes:
                raise _BodyTooLarge
            yield chunk

    async def _relay(
        self, request: web.Request, answer: aiohttp.ClientResponse, upstream: Upstream
    ) -> web.StreamResponse:
        headers = downstream_response_headers(answer.headers)
        length = answer.content_length
        if (
            request.method == "HEAD"
            or answer.status in _NO_BODY_STATUSES
            or (length is not None and length <= _SMALL_BODY_BYTES)
        ):
            body = await answer.read()
            response = web.Response(status=answer.status, reason=answer.reason, headers=headers)
            if body:
                response.body = body
            return response
        stream = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        await stream.prepare(request)
        try:
            async for chunk in answer.content.iter_chunked(_CHUNK_BYTES):
                await stream.write(chunk)
        except ConnectionResetError:
            # The client went away mid-download (aiohttp's reset error is also a ClientError,
            # so this comes first): not an upstream failure, and nobody is left to tell.
            return stream
        except (aiohttp.ClientError, TimeoutError) as exc:
            # The status line is out: the only honest signal left is a cut connection.
            self._metrics.upstream_errors.labels(upstream, "mid_stream").inc()
            _LOG.warning("upstream_failed_mid_stream", upstream=upstream, error=repr(exc)[:200])
            if request.transport is not None:
                request.transport.close()
            return stream  # aiohttp's closing write_eof then sees the reset
        await stream.write_eof()
        return stream
