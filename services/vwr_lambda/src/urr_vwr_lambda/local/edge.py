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
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from prometheus_client import CollectorRegistry

from urr_common.clients import aws_client_kwargs
from urr_common.logs import configure_logging
from urr_common.problems import ProblemError
from urr_common.service import create_service_app, run, serve, settle_heap
from urr_common.settings import load_settings
from urr_vwr_lambda.edge import EdgeVerifier
from urr_vwr_lambda.edge_config import EdgeConfigSource
from urr_vwr_lambda.gates.clients import VIEWER_ADDRESS_HEADER
from urr_vwr_lambda.gates.origin import OriginSecrets
from urr_vwr_lambda.local import GC_GEN0_THRESHOLD
from urr_vwr_lambda.local.cloudfront import edge_response, viewer_request_event
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

#: Hop-by-hop headers (RFC 9110 §7.6.1) never cross a proxy.
_HOP_BY_HOP = frozenset(
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
            if len(parts) != 3 or not _ASSET_VERSION.match(parts[1]) or parts[2].startswith("."):
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


def static_response(request: web.Request, found: StaticFile) -> web.Response:
    """``found`` as S3 behind CloudFront answers it: 304 when ``If-None-Match`` matches."""
    headers = {"Cache-Control": found.cache_control, "ETag": found.etag}
    if etag_matches(request.headers.get("If-None-Match"), found.etag):
        return web.Response(status=304, headers=headers)
    return web.Response(body=found.data, content_type=found.kind, headers=headers)


def _event_document(edge_config_target: str, tail: str) -> bytes | None:
    """``/vwr/events/<id>.json``: the document the admin route published beside the edge
    document (a missing one is a 404: the page then shows its defaults)."""
    parts = tail.split("/")
    found = _EVENT_DOCUMENT.match(parts[1]) if len(parts) == 2 else None
    if found is None or edge_config_target.startswith("s3://"):
        return None
    path = Path(document_target(edge_config_target, found.group(1)))
    try:
        return path.read_bytes()
    except OSError:
        return None


def _event_document_response(edge_config_target: str, tail: str) -> web.Response:
    document = _event_document(edge_config_target, tail)
    if document is None:
        raise web.HTTPNotFound(text="no such document", headers={"Cache-Control": "max-age=30"})
    return web.Response(
        body=document,
        content_type="application/json",
        headers={"Cache-Control": DOCUMENT_CACHE_CONTROL},
    )


def _viewer_address(request: web.Request) -> str:
    """``ip:port`` of the viewer, as CloudFront puts it in ``CloudFront-Viewer-Address``."""
    peer = request.transport.get_extra_info("peername") if request.transport else None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return f"{request.remote or '127.0.0.1'}:0"


def _api_headers(request: web.Request, origin: tuple[str, str] | None) -> dict[str, str]:
    """What CloudFront adds towards API Gateway: the viewer's address and the origin header.

    Both replace anything of the same name the viewer sent (a viewer cannot forge them).
    """
    headers = _forward_headers(request)
    added = {VIEWER_ADDRESS_HEADER: _viewer_address(request)}
    if origin is not None:
        added[origin[0]] = origin[1]
    lowered = {name.lower() for name in added}
    kept = {name: value for name, value in headers.items() if name.lower() not in lowered}
    return {**kept, **added}


def _forward_headers(request: web.Request) -> dict[str, str]:
    connection_named = {
        token.strip().lower() for token in request.headers.get("Connection", "").split(",")
    }
    headers = {
        name: value
        for name, value in request.headers.items()
        if name.lower() not in _HOP_BY_HOP and name.lower() not in connection_named
    }
    forwarded_for = request.headers.get("X-Forwarded-For")
    client = request.remote or "127.0.0.1"
    headers["X-Forwarded-For"] = f"{forwarded_for}, {client}" if forwarded_for else client
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    return headers


async def _proxy(
    request: web.Request, upstream: Upstream, target: str, headers: dict[str, str] | None = None
) -> web.StreamResponse:
    body = await request.read()
    sent = headers if headers is not None else _forward_headers(request)
    try:
        answer = await upstream.request(request.method, target, list(sent.items()), body)
    except (UpstreamFailed, TimeoutError) as exc:
        raise BadGateway(f"the origin did not answer: {type(exc).__name__}") from exc
    # Every answer behind the edge is small (JSON, a page): it came whole, and goes on as it
    # came (never decompressed).
    response = web.Response(status=answer.status, reason=answer.reason or None)
    for name, value in answer.headers:
        if name.lower() not in _HOP_BY_HOP:
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
    app[VERIFIER_KEY] = verifier or EdgeVerifier(EdgeConfigSource(settings.edge_config.target))
    secrets = origin_secrets(settings)
    document_is_remote = "://" in settings.edge_config.target
    static = StaticFiles(Path(str(resources.files("urr_vwr_lambda") / "static")))
    # The upstream URLs may carry a path prefix: kept in front of every proxied path.
    api_prefix = urlsplit(settings.api_url).path.rstrip("/")
    gateway_prefix = urlsplit(settings.gateway_url).path.rstrip("/")

    async def upstreams_ctx(app: web.Application) -> AsyncIterator[None]:
        # No cookie jar (none in this client): an origin's Set-Cookie belongs to the viewer it
        # answered and goes back to that viewer only.
        upstreams = Upstreams(
            api=Upstream(settings.api_url, timeout_s=settings.upstream_timeout_s),
            gateway=Upstream(settings.gateway_url, timeout_s=settings.upstream_timeout_s),
        )
        app[UPSTREAMS_KEY] = upstreams
        try:
            yield
        finally:
            await upstreams.api.close()
            await upstreams.gateway.close()

    app.cleanup_ctx.append(upstreams_ctx)

    async def viewer_request(request: web.Request) -> web.StreamResponse | None:
        """Run the edge function; a response it generates short-circuits the request."""
        event = viewer_request_event(request)
        # The function may fetch its document from a URL: keep that off the event loop. A
        # local file it only stats (twice a second at most), cheaper than the thread hop,
        # which cost a flash crowd ~10 % of this process's CPU.
        verifier = request.app[VERIFIER_KEY]
        answer: dict[str, Any] = (
            await asyncio.to_thread(verifier, event) if document_is_remote else verifier(event)
        )
        return edge_response(answer) if "status" in answer else None

    async def waiting_page(request: web.Request) -> web.StreamResponse:
        generated = await viewer_request(request)
        if generated is not None:
            return generated
        tail = request.match_info.get("tail", "")
        if tail.startswith("events/"):
            return _event_document_response(settings.edge_config.target, tail)
        found = static.get(tail)
        if found is None:
            raise web.HTTPNotFound(text="no such asset")
        return static_response(request, found)

    async def waiting_api(request: web.Request) -> web.StreamResponse:
        generated = await viewer_request(request)
        if generated is not None:
            return generated
        tail = request.raw_path.removeprefix("/vwr-api")
        origin = None
        if secrets is not None:
            values = secrets.cached() or await asyncio.to_thread(secrets.values)
            origin = (settings.origin.header, values[0]) if values else None
        headers = _api_headers(request, origin)
        return await _proxy(request, request.app[UPSTREAMS_KEY].api, api_prefix + tail, headers)

    async def origin(request: web.Request) -> web.StreamResponse:
        generated = await viewer_request(request)
        if generated is not None:
            return generated
        return await _proxy(
            request, request.app[UPSTREAMS_KEY].gateway, gateway_prefix + request.raw_path
        )

    app.router.add_get("/vwr", waiting_page)
    app.router.add_get("/vwr/{tail:.*}", waiting_page)
    app.router.add_route("*", "/vwr-api/{tail:.*}", waiting_api)
    app.router.add_route("*", "/{tail:.*}", origin)
    return app


def main() -> None:
    settings = load_settings(EdgeEmulatorSettings)
    configure_logging(settings.log, service="urr-vwr-edge")

    async def serve_app() -> None:
        app = create_app(settings)
        settle_heap(GC_GEN0_THRESHOLD)
        await serve(app, settings.http)

    run(serve_app, use_uvloop=settings.http.use_uvloop)


if __name__ == "__main__":
    main()
