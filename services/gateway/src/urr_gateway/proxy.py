"""The reverse proxy: the handler behind every filter.

Upstream calls go through the gateway's own HTTP/1.1 client (``urr_gateway.upstream``): one
bounded keep-alive pool per upstream, so a slow upstream fills only its own pool. Bytes pass
through as the upstream wrote them (no decompression, no cookie jar). Request and response
bodies are streamed piece by piece, so a 10 MB upload or download costs the gateway a
bounded buffer, not 10 MB; small answers with a known length (the common case) are read in
one piece. Redirects are passed to the client, never followed.

The client's body has deadlines: all of it within ``body_timeout_s`` and, after
``body_rate_grace_s``, at least ``min_body_rate_bytes_per_s`` on average; a client that
dribbles gets 408 ``body_timeout`` and the upstream connection it held is closed, so slow
uploads cannot hold a pool hostage.

Failures before the answer started become problems: connect refused or timed out -> 502
``upstream_unavailable``; the upstream's pool stayed full for ``pool_timeout_s`` -> 503
``upstream_busy`` with ``Retry-After``; no answer within the read timeout -> 504
``upstream_timeout``; an upstream that breaks the protocol -> 502 ``upstream_bad_response``.
A failure after the answer started streaming can only be signalled by cutting the
connection, which is done.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, istr

from urr_common.identity import ASSERTION_HEADER, AssertionSigner
from urr_common.logs import get_logger
from urr_common.problems import (
    BadRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ProblemError,
)
from urr_gateway.context import IDENTITY, Identity, facts_of, peek
from urr_gateway.forwarding import downstream_response_headers
from urr_gateway.ingress import FORWARD_HEADERS, NORMALISED_PATH, RAW_QUERY
from urr_gateway.metrics import GatewayMetrics
from urr_gateway.routing import ROUTE, RouteMatch, Upstream
from urr_gateway.settings import GatewaySettings, ProxySettings
from urr_gateway.upstream import (
    InvalidHeader,
    PoolLimits,
    PoolTimeout,
    RequestBodyError,
    UpstreamClient,
    UpstreamConnectError,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
)

_LOG = get_logger(__name__)

#: Answers up to this size with a known length are read whole instead of streamed.
_SMALL_BODY_BYTES = 64 * 1024
_NO_BODY_STATUSES = frozenset({204, 304})
#: ``ASSERTION_HEADER`` as an ``istr`` (see ``forwarding``).
_ASSERTION = istr(ASSERTION_HEADER)


class BadGateway(ProblemError):
    status = 502
    default_code = "upstream_unavailable"


class GatewayTimeout(ProblemError):
    status = 504
    default_code = "upstream_timeout"


class UpstreamBusy(ProblemError):
    status = 503
    default_code = "upstream_busy"


class RequestTimeout(ProblemError):
    status = 408
    default_code = "body_timeout"


class _BodyTooLarge(Exception):
    """The client streamed more than the limit (raised inside the upload)."""


class _BodyTooSlow(Exception):
    """The client's body did not arrive within its deadline or at the minimum rate."""


def body_read_deadline(
    started: float, received: int, overall: float, *, min_rate: int, grace_s: float
) -> float:
    """Loop time by which more of the client's body must arrive.

    ``received`` bytes since ``started`` buy ``received / min_rate`` seconds beyond the
    grace; never past ``overall`` (the whole body's deadline). ``min_rate`` 0: no minimum.
    """
    if not min_rate:
        return overall
    return min(overall, started + grace_s + received / min_rate)


def open_jwks_session(settings: GatewaySettings) -> aiohttp.ClientSession:
    """The aiohttp session of the JWKS fetches (a few a minute: not worth a lean client)."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=8, keepalive_timeout=30.0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.proxy.connect_timeout_s),
        trust_env=False,
    )


def upstream_urls(settings: GatewaySettings) -> dict[Upstream, str]:
    """The base URL of every upstream the routing table names (settings field = its value)."""
    urls = settings.upstreams.model_dump()
    return {upstream: str(urls[upstream.value]) for upstream in Upstream}


def open_upstream_client(settings: GatewaySettings) -> UpstreamClient:
    """The proxy's client: one pool per upstream the routing table names."""
    proxy = settings.proxy
    return UpstreamClient(
        {upstream.value: url for upstream, url in upstream_urls(settings).items()},
        PoolLimits(
            limit=proxy.connections_per_upstream,
            connect_timeout_s=proxy.connect_timeout_s,
            pool_timeout_s=proxy.pool_timeout_s,
            read_timeout_s=proxy.read_timeout_s,
            idle_timeout_s=proxy.keepalive_timeout_s,
        ),
    )


def _request_parts(
    request: web.Request,
) -> tuple[RouteMatch | None, str, str, CIMultiDict[str], Identity | None]:
    """Route, raw query, canonical path, upstream headers and identity, as ingress and the
    filters left them."""
    facts = facts_of(request)
    if facts is None:
        return (
            request.get(ROUTE),
            request[RAW_QUERY],
            request[NORMALISED_PATH].raw,
            request[FORWARD_HEADERS],
            request.get(IDENTITY),
        )
    identity = facts.identity
    if identity is None:  # a filter given as a middleware publishes it on the request only
        identity = peek(request, IDENTITY)
    return facts.route, facts.raw_query, facts.normalised.raw, facts.headers, identity


class UpstreamProxy:
    def __init__(
        self,
        upstreams: Mapping[Upstream, str],
        client: Callable[[], UpstreamClient],
        max_body_bytes: int,
        metrics: GatewayMetrics,
        proxy: ProxySettings | None = None,
        signer: AssertionSigner | None = None,
    ) -> None:
        """``signer``: signs the identity assertion of logged-in callers' requests (without
        one, upstreams see no identity and refuse routes that need a user)."""
        self._signer = signer
        #: Path prefix of each upstream's base URL (usually empty).
        self._prefixes = {name: urlsplit(base).path.rstrip("/") for name, base in upstreams.items()}
        #: Each upstream's name as the assertion's audience (an enum's ``.value`` is a Python
        #: descriptor call per request).
        self._audiences: dict[Upstream, str] = {upstream: upstream.value for upstream in Upstream}
        self._client = client
        self._max_body_bytes = max_body_bytes
        self._metrics = metrics
        proxy = proxy or ProxySettings()
        self._body_timeout_s = proxy.body_timeout_s
        self._min_rate = proxy.min_body_rate_bytes_per_s
        self._grace_s = proxy.body_rate_grace_s
        self._retry_after = str(max(1, math.ceil(proxy.pool_timeout_s)))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        answer, upstream = await self.open(request)
        try:
            return await self._relay(request, answer, upstream)
        finally:
            answer.close()

    async def open(self, request: web.Request) -> tuple[UpstreamResponse, Upstream]:
        """Send the request upstream; the answer with its headers in (the caller reads its
        body and closes it), or the problem that answers the client instead."""
        upstream, sending = self.start(request)
        try:
            answer = await sending
        except (RequestBodyError, InvalidHeader, UpstreamError) as exc:
            raise self.send_failed(upstream, exc) from exc
        return answer, upstream

    def start(self, request: web.Request) -> tuple[Upstream, Awaitable[UpstreamResponse]]:
        """``open`` without its own coroutine: the upstream and the client's ``send`` to
        await, whose failures ``send_failed`` turns into problems (the protocol server
        awaits it directly, one level less to resume when the answer's headers come).
        Raises the problem answering a request that must not go upstream."""
        match, query, path, headers, identity = _request_parts(request)
        if match is None or match.route.upstream is None:
            raise NotFound("no API route matches this path", code="route_not_found")
        upstream = match.route.upstream
        allowed = match.route.methods
        if allowed is not None and request.method not in allowed:
            raise MethodNotAllowed(
                f"this route answers {', '.join(sorted(allowed))} only",
                headers={"Allow": ", ".join(sorted(allowed))},
            )
        length = request.content_length
        if length is not None and length > self._max_body_bytes:
            raise self._too_large()
        target = self._prefixes[upstream] + path
        if query:
            target = f"{target}?{query}"
        if identity is not None and self._signer is not None:
            # Bound to this upstream, method and exact path: useless for any other request.
            headers[_ASSERTION] = self._signer.assertion(
                identity.user_id,
                identity.role,
                audience=self._audiences[upstream],
                method=request.method,
                path=target.partition("?")[0],
            )
        body = self._client_body(request) if request.body_exists else None
        return upstream, self._client().send(
            upstream, request.method, target, headers, body, length
        )

    def send_failed(self, upstream: Upstream, exc: Exception) -> BaseException:
        """What to raise instead of ``exc``, an exception of ``start``'s send."""
        if isinstance(exc, RequestBodyError):
            if isinstance(exc.cause, _BodyTooLarge):
                return self._too_large()
            if isinstance(exc.cause, _BodyTooSlow):
                self._metrics.upstream_errors.labels(upstream, "client_body_timeout").inc()
                return RequestTimeout(
                    "the request body did not arrive in time", headers={"Connection": "close"}
                )
            return exc.cause  # the client went away mid-upload
        if isinstance(exc, InvalidHeader):
            return BadRequest(str(exc), code="invalid_header")
        if isinstance(exc, UpstreamError):
            return self._upstream_problem(upstream, exc)
        return exc

    def _upstream_problem(self, upstream: Upstream, exc: UpstreamError) -> ProblemError:
        """The problem answering an upstream failure (before the answer started), counted."""
        problem: ProblemError
        if isinstance(exc, UpstreamConnectError):
            kind = "connect"
            problem = BadGateway(f"the {upstream} service cannot be reached")
        elif isinstance(exc, PoolTimeout):
            kind = "pool_timeout"
            problem = UpstreamBusy(
                f"every connection to the {upstream} service is busy",
                headers={"Retry-After": self._retry_after},
            )
        elif isinstance(exc, UpstreamTimeout):
            kind = "timeout"
            problem = GatewayTimeout(f"the {upstream} service did not answer in time")
        else:
            kind = "protocol"
            problem = BadGateway(
                f"the {upstream} service answered badly", code="upstream_bad_response"
            )
        self._metrics.upstream_errors.labels(upstream, kind).inc()
        return problem

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(
            f"the request body exceeds {self._max_body_bytes} bytes", code="body_too_large"
        )

    async def _client_body(self, request: web.Request) -> AsyncIterator[bytes]:
        """The client's body as it arrives, under its deadlines and the size limit.

        Each read may wait until the later of the rate's allowance (grace + bytes so far /
        minimum rate) and never past the overall body deadline, so one formula covers a
        client that stops, one that dribbles, and one that is merely slow.
        """
        content = request.content
        loop = asyncio.get_running_loop()
        started = loop.time()
        overall = started + self._body_timeout_s
        received = 0
        while True:
            deadline = body_read_deadline(
                started, received, overall, min_rate=self._min_rate, grace_s=self._grace_s
            )
            try:
                async with asyncio.timeout_at(deadline):
                    chunk = await content.readany()
            except TimeoutError as exc:
                raise _BodyTooSlow from exc
            if not chunk:
                return
            received += len(chunk)
            if received > self._max_body_bytes:
                raise _BodyTooLarge
            yield chunk

    async def _relay(
        self, request: web.Request, answer: UpstreamResponse, upstream: Upstream
    ) -> web.StreamResponse:
        headers = downstream_response_headers(answer.headers)
        length = answer.content_length
        if (
            request.method == "HEAD"
            or answer.status in _NO_BODY_STATUSES
            or (length is not None and length <= _SMALL_BODY_BYTES)
        ):
            try:
                body = await answer.read()
            except UpstreamError as exc:
                raise self._upstream_problem(upstream, exc) from exc
            response = web.Response(status=answer.status, reason=answer.reason, headers=headers)
            if body:
                response.body = body
            return response
        stream = web.StreamResponse(status=answer.status, reason=answer.reason, headers=headers)
        await stream.prepare(request)
        try:
            while chunk := await answer.read_chunk():
                await stream.write(chunk)
        except ConnectionResetError:
            # The client went away mid-download: not an upstream failure, nobody to tell.
            return stream
        except UpstreamError as exc:
            # The status line is out: the only honest signal left is a cut connection.
            self._metrics.upstream_errors.labels(upstream, "mid_stream").inc()
            _LOG.warning("upstream_failed_mid_stream", upstream=upstream, error=repr(exc)[:200])
            if request.transport is not None:
                request.transport.close()
            return stream  # aiohttp's closing write_eof then sees the reset
        await stream.write_eof()
        return stream
