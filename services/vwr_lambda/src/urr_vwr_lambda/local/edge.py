"""The CloudFront emulator (port 8000): seed 004 §5.5's behaviours and the edge verifier.

``/vwr/*`` the static waiting page (``/vwr/{eventId}`` is rewritten to its ``index.html``, as
the CloudFront Function does), ``/vwr-api/*`` the API Gateway emulator with the prefix stripped,
``/*`` the gateway. The edge verifier runs on every viewer request first.
``python -m urr_vwr_lambda.local.edge``; settings ``EdgeEmulatorSettings``.
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import re
import stat
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from multidict import CIMultiDict
from prometheus_client import CollectorRegistry

from urr_common.clients import aws_client_kwargs
from urr_common.logs import configure_logging
from urr_common.problems import NotFound, ProblemError
from urr_common.service import create_service_app, run, serve, settle_heap
from urr_common.settings import load_settings
from urr_vwr_lambda.edge import EdgeVerifier
from urr_vwr_lambda.edge_config import EdgeConfigSource
from urr_vwr_lambda.gates.clients import VIEWER_ADDRESS_HEADER
from urr_vwr_lambda.gates.origin import OriginSecrets
from urr_vwr_lambda.local import GC_GEN0_THRESHOLD
from urr_vwr_lambda.local.cloudfront import edge_response, viewer_request_event
from urr_vwr_lambda.local.upstream import Answer as UpstreamAnswer
from urr_vwr_lambda.local.upstream import Upstream, UpstreamFailed
from urr_vwr_lambda.page_document import DOCUMENT_CACHE_CONTROL, document_target
from urr_vwr_lambda.queueing import etag_matches
from urr_vwr_lambda.settings import EdgeEmulatorSettings


@dataclass(frozen=True, slots=True)
class Upstreams:
    api: Upstream
    gateway: Upstream


UPSTREAMS_KEY = web.AppKey("vwr_edge_upstreams", Upstreams)
VERIFIER_KEY = web.AppKey("vwr_edge_verifier", EdgeVerifier)
#: The waiting page's path, and the prefix of the API Gateway behaviour.
PAGE_ROUTE = "/vwr"
API_PREFIX = "/vwr-api"

#: Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)
#: The objects' Cache-Control as uploaded to S3 (README "Caching of the waiting page"): the
#: shell's HTML is short-lived, the versioned assets never change under their path.
SHELL_CACHE = "public, max-age=60"
ASSET_CACHE = "public, max-age=31536000, immutable"
_ASSET_VERSION = re.compile(r"^v[0-9]{1,4}$")
_EVENT_DOCUMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_-]{0,63})\.json$")


class BadGateway(ProblemError):
    status = 502
    default_code = "bad_gateway"


@dataclass(frozen=True, slots=True)
class StaticFile:
    """A packaged file as the edge serves it, with the validator S3 gives an object."""

    data: bytes
    kind: str
    cache_control: str
    #: S3's ETag of a single-part upload: the MD5 of the bytes, quoted.
    etag: str
    #: ``(st_mtime_ns, st_size)`` of the file when it was read.
    stamp: tuple[int, int]


class StaticFiles:
    """The packaged files under ``root``, read once and kept in memory.

    Each request still stats its file (one system call, no open or read): a file changed on
    disk (an edited page in a dev checkout) is read again, as S3 would serve the new object.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._files: dict[str, StaticFile] = {}  # by name under ``root``
        self._paths: dict[str, str] = {}

    def get(self, tail: str) -> StaticFile | None:
        """The file for ``/vwr/<tail>``: a versioned asset (``assets/v<N>/<name>``), or the
        page shell for any other path."""
        parts = [part for part in tail.split("/") if part]
        if parts and parts[0] == "assets":
            version_ok = _ASSET_VERSION.fullmatch(parts[1]) if len(parts) == 3 else None
            if version_ok is None or parts[2].startswith("."):
                return None
            return self._read(f"assets/{parts[1]}/{parts[2]}", ASSET_CACHE)
        return self._read("index.html", SHELL_CACHE)

    def _read(self, name: str, cache_control: str) -> StaticFile | None:
        path = self._paths.get(name) or str(self.root / name)
        try:
            status = os.stat(path)
        except OSError:
            self._files.pop(name, None)
            self._paths.pop(name, None)
            return None
        if not stat.S_ISREG(status.st_mode):
            return None
        self._paths[name] = path  # only names of files: a viewer's made-up ones are not kept
        stamp = (status.st_mtime_ns, status.st_size)
        cached = self._files.get(name)
        if cached is not None and cached.stamp == stamp:
            return cached
        try:
            with open(path, "rb") as file:
                data = file.read()
        except OSError:
            return None
        kind = mimetypes.guess_type(name)[0] or "application/octet-stream"
        etag = f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
        cached = StaticFile(data, kind, cache_control, etag, stamp)
        self._files[name] = cached
        return cached


def static_answer(
    found: StaticFile, if_none_match: str | None
) -> tuple[int, list[tuple[str, str]], bytes]:
    """``found`` as S3 behind CloudFront answers it: 304 when ``If-None-Match`` matches."""
    headers = [("Cache-Control", found.cache_control), ("ETag", found.etag)]
    if etag_matches(if_none_match, found.etag):
        return 304, headers, b""
    return 200, [*headers, ("Content-Type", found.kind)], found.data


def _event_document(edge_config_target: str, tail: str) -> bytes | None:
    """``/vwr/events/<id>.json``: the document the admin route published beside the edge
    document (a missing one is a 404: the page then shows its defaults)."""
    parts = tail.split("/")
    found = _EVENT_DOCUMENT.fullmatch(parts[1]) if len(parts) == 2 else None
    if found is None or edge_config_target.startswith("s3://"):
        return None
    path = Path(document_target(edge_config_target, found.group(1)))
    try:
        return path.read_bytes()
    except OSError:
        return None


def first_field(fields: Iterable[tuple[str, str]], lowered: str) -> str | None:
    """The first value of a header field (``lowered``: its name in lower case)."""
    for name, value in fields:
        if name.lower() == lowered:
            return value
    return None


def forward_headers(fields: Iterable[tuple[str, str]], client: str, host: str) -> dict[str, str]:
    """What goes on to an origin: the viewer's fields but the hop-by-hop ones (and those its
    ``Connection`` names), and the ``X-Forwarded-*`` fields. ``client``: the viewer's IP;
    ``host``: its ``Host``."""
    fields = list(fields)
    connection_named = {
        token.strip().lower() for token in (first_field(fields, "connection") or "").split(",")
    }
    headers = {
        name: value
        for name, value in fields
        if name.lower() not in HOP_BY_HOP and name.lower() not in connection_named
    }
    forwarded_for = first_field(fields, "x-forwarded-for")
    headers["X-Forwarded-For"] = f"{forwarded_for}, {client}" if forwarded_for else client
    headers["X-Forwarded-Proto"] = "http"
    headers["X-Forwarded-Host"] = host
    return headers


def api_headers(
    forwarded: dict[str, str], viewer_address: str, origin: tuple[str, str] | None
) -> dict[str, str]:
    """What CloudFront adds towards API Gateway: the viewer's address (``ip:port``, as in
    ``CloudFront-Viewer-Address``) and the origin header.

    Both replace anything of the same name the viewer sent (a viewer cannot forge them).
    """
    added = {VIEWER_ADDRESS_HEADER: viewer_address}
    if origin is not None:
        added[origin[0]] = origin[1]
    lowered = {name.lower() for name in added}
    kept = {name: value for name, value in forwarded.items() if name.lower() not in lowered}
    return {**kept, **added}


def _viewer_address(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return f"{request.remote or '127.0.0.1'}:0"


def _forward_headers(request: web.Request) -> dict[str, str]:
    return forward_headers(request.headers.items(), request.remote or "127.0.0.1", request.host)


class Edge:
    """What the edge does with a viewer request, whichever listener read it (aiohttp's
    handlers below, or ``local.edge_server``'s own)."""

    def __init__(
        self,
        settings: EdgeEmulatorSettings,
        verifier: EdgeVerifier,
        secrets: OriginSecrets | None,
    ) -> None:
        self.settings = settings
        self.verifier = verifier
        self.secrets = secrets
        self.document_is_remote = "://" in settings.edge_config.target
        self.static = StaticFiles(Path(str(resources.files("urr_vwr_lambda") / "static")))
        # The upstream URLs may carry a path prefix: kept in front of every proxied path.
        self.api_prefix = urlsplit(settings.api_url).path.rstrip("/")
        self.gateway_prefix = urlsplit(settings.gateway_url).path.rstrip("/")
        #: Set while the app runs (its cleanup context).
        self.upstreams: Upstreams | None = None

    async def viewer_request(self, event: dict[str, Any]) -> dict[str, Any] | None:
        """Run the edge function; the response it generates, if it answers itself."""
        # The function may fetch its document from a URL: keep that off the event loop. A
        # local file it only stats (twice a second at most), cheaper than the thread hop,
        # which cost a flash crowd ~10 % of this process's CPU.
        verifier = self.verifier
        answer: dict[str, Any] = (
            await asyncio.to_thread(verifier, event) if self.document_is_remote else verifier(event)
        )
        return answer if "status" in answer else None

    def waiting_page(
        self, tail: str, if_none_match: str | None
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        """``GET /vwr/<tail>``: an event document, a packaged file, or a 404 problem."""
        if tail.startswith("events/"):
            document = _event_document(self.settings.edge_config.target, tail)
            if document is None:
                raise NotFound("no such document")
            headers = [
                ("Content-Type", "application/json"),
                ("Cache-Control", DOCUMENT_CACHE_CONTROL),
            ]
            return 200, headers, document
        found = self.static.get(tail)
        if found is None:
            raise NotFound("no such asset")
        return static_answer(found, if_none_match)

    async def origin_header(self) -> tuple[str, str] | None:
        """The origin-verify header CloudFront adds towards the API, when configured."""
        secrets = self.secrets
        if secrets is None:
            return None
        values = secrets.cached() or await asyncio.to_thread(secrets.values)
        return (self.settings.origin.header, values[0]) if values else None

    async def forward(
        self, api: bool, method: str, target: str, headers: dict[str, str], body: bytes
    ) -> UpstreamAnswer:
        """The origin's whole answer (every answer behind the edge is small: JSON, a page);
        a 502 problem when it does not answer."""
        upstreams = self.upstreams
        if upstreams is None:
            raise RuntimeError("the edge's app is not running")
        upstream = upstreams.api if api else upstreams.gateway
        try:
            return await upstream.request(method, target, list(headers.items()), body)
        except (UpstreamFailed, TimeoutError) as exc:
            raise BadGateway(f"the origin did not answer: {type(exc).__name__}") from exc


EDGE_KEY = web.AppKey("vwr_edge", Edge)


def _response(status: int, headers: list[tuple[str, str]], body: bytes) -> web.Response:
    if status == 304:
        return web.Response(status=304, headers=CIMultiDict(headers))
    return web.Response(status=status, body=body, headers=CIMultiDict(headers))


async def _proxy(
    request: web.Request, edge: Edge, api: bool, target: str, headers: dict[str, str]
) -> web.StreamResponse:
    body = await request.read()
    answer = await edge.forward(api, request.method, target, headers, body)
    # It goes on as it came (never decompressed).
    response = web.Response(status=answer.status, reason=answer.reason or None)
    for name, value in answer.headers:
        if name.lower() not in HOP_BY_HOP:
            response.headers.add(name, value)
    response.body = answer.body  # after the headers: keeps the origin's Content-Type
    return response


def origin_secrets(settings: EdgeEmulatorSettings) -> OriginSecrets | None:
    """The origin-verify value the distribution is configured with (its ``AWSCURRENT``)."""
    if not settings.origin.secret_id:
        return None
    import boto3

    client = boto3.session.Session().client(
        "secretsmanager", **aws_client_kwargs(settings.aws, "secretsmanager")
    )
    return OriginSecrets(client, settings.origin.secret_id, cache_s=settings.origin.cache_s)


def create_app(
    settings: EdgeEmulatorSettings,
    *,
    registry: CollectorRegistry | None = None,
    verifier: EdgeVerifier | None = None,
) -> web.Application:
    app = create_service_app(settings, registry=registry)
    the_verifier = verifier or EdgeVerifier(EdgeConfigSource(settings.edge_config.target))
    app[VERIFIER_KEY] = the_verifier
    edge = app[EDGE_KEY] = Edge(settings, the_verifier, origin_secrets(settings))

    async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
        # No cookie jar (none in this client): an origin's Set-Cookie belongs to the viewer it
        # answered and goes back to that viewer only.
        upstreams = Upstreams(
            api=Upstream(settings.api_url, timeout_s=settings.upstream_timeout_s),
            gateway=Upstream(settings.gateway_url, timeout_s=settings.upstream_timeout_s),
        )
        app[UPSTREAMS_KEY] = edge.upstreams = upstreams
        try:
            yield
        finally:
            await upstreams.api.close()
            await upstreams.gateway.close()

    app.cleanup_ctx.append(upstreams_ctx)

    async def viewer_request(request: web.Request) -> web.StreamResponse | None:
        """Run the edge function; a response it generates short-circuits the request."""
        generated = await edge.viewer_request(viewer_request_event(request))
        return edge_response(generated) if generated is not None else None

    async def waiting_page(request: web.Request) -> web.StreamResponse:
        generated = await viewer_request(request)
        if generated is not None:
            return generated
        tail = request.match_info.get("tail", "")
        return _response(*edge.waiting_page(tail, request.headers.get("If-None-Match")))

    async def waiting_api(request: web.Request) -> web.StreamResponse:
        generated = await viewer_request(request)
        if generated is not None:
            return generated
        tail = request.raw_path.removeprefix("/vwr-api")
        headers = api_headers(
            _forward_headers(request), _viewer_address(request), await edge.origin_header()
        )
        return await _proxy(request, edge, True, edge.api_prefix + tail, headers)

    async def origin(request: web.Request) -> web.StreamResponse:
        generated = await viewer_request(request)
        if generated is not None:
            return generated
        target = edge.gateway_prefix + request.raw_path
        return await _proxy(request, edge, False, target, _forward_headers(request))

    app.router.add_get(PAGE_ROUTE, waiting_page)
    app.router.add_get(PAGE_ROUTE + "/{tail:.*}", waiting_page)
    app.router.add_route("*", API_PREFIX + "/{tail:.*}", waiting_api)
    app.router.add_route("*", "/{tail:.*}", origin)
    return app


def main() -> None:
    settings = load_settings(EdgeEmulatorSettings)
    configure_logging(settings.log, service="urr-vwr-edge")

    async def serve_app() -> None:
        app = create_app(settings)
        settle_heap(GC_GEN0_THRESHOLD)
        if settings.local_edge_server == "aiohttp":
            await serve(app, settings.http)
            return
        # (imported here: the listener imports this module's ``Edge``)
        from urr_vwr_lambda.local.edge_server import edge_site

        limits = settings.http
        site = edge_site(
            max_body_bytes=limits.max_body_bytes, drain_timeout_s=limits.shutdown_timeout_s
        )
        await serve(app, settings.http, site=site)

    run(serve_app, use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    # The module's importable copy runs, not ``__main__``: the listener imports it, and its
    # ``EDGE_KEY`` must be the one ``create_app`` stored the ``Edge`` under.
    from urr_vwr_lambda.local.edge import main as edge_main

    edge_main()
