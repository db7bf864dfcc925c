"""A lean DynamoDB client for the handlers' hot operations (issue 22 item 3).

A warm container spends about 1 ms of CPU per DynamoDB call in botocore (its serialiser and
parser walking the model, the event hooks, the user-agent string built per request, urllib3),
against well under 0.2 ms for the same JSON posted in one write over a kept-alive HTTP/1.1
connection of its own (``_Connection``; ``http.client`` wrote the head and the body
separately and parsed answers with ``email``'s parser) and signed by
``urr_common.sigv4`` (the day's signing key kept; botocore's ``SigV4Auth`` cost about as
much as the rest of the call). Lambda bills by the millisecond, so ``LeanDynamoDB`` does the
latter for the operations the handlers send (``HOT_OPERATIONS``) and hands everything else
(``create_table``, ``close``, ``meta``...) to the botocore client it wraps, which also gives it
its credentials (the same chain: Lambda's environment keys with their session token), its
region, endpoint and operation models.

What it keeps of botocore's contract, so the callers need no change:

* answers as botocore parses them: the JSON body, ``B``/``BS`` values decoded from base64 (and
  ``bytes`` encoded on the way in), a ``ResponseMetadata`` (request id, status, headers,
  retry attempts);
* errors as botocore raises them: the client's modelled exception class (a ``ClientError``)
  with the same ``error_response`` (``Error.Code``/``Error.Message``, and the error's own
  members such as ``Item`` under ``ReturnValuesOnConditionCheckFailure`` or
  ``CancellationReasons``); transport failures as botocore's ``EndpointConnectionError``,
  ``ConnectionClosedError`` and ``ReadTimeoutError``;
* botocore's *standard* retry mode, by its own classes (``botocore.retries.standard``): the
  same attempts, the same retryable conditions (throttling codes, 5xx, transient codes,
  connection errors, a DynamoDB CRC32 mismatch), the same jittered exponential backoff and
  the same retry quota;
* the hooks the tests and benches listen to, ``provide-client-params`` and ``before-call``,
  fired on an emitter of its own at ``meta.events`` (botocore's default handlers are not run;
  the one that matters in Lambda, the ``X-Amzn-Trace-Id`` recursion-detection header, is
  added here).

No client-side parameter validation: the handlers build every request themselves and
DynamoDB validates it (``ValidationException``), as botocore with
``parameter_validation=False`` would.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import select
import socket
import ssl
import threading
import time
import zlib
from typing import Any
from urllib.parse import quote, urlsplit
from urllib.request import getproxies, proxy_bypass

from botocore.exceptions import (
    ConnectionClosedError,
    ConnectTimeoutError,
    EndpointConnectionError,
    HTTPClientError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError
from botocore.hooks import HierarchicalEmitter
from botocore.retries import quota, standard

from urr_common.sigv4 import SigV4Signer, host_header

#: The operations sent by the lean path; every other attribute is the botocore client's.
HOT_OPERATIONS = {
    "get_item": "GetItem",
    "put_item": "PutItem",
    "update_item": "UpdateItem",
    "delete_item": "DeleteItem",
    "batch_get_item": "BatchGetItem",
    "batch_write_item": "BatchWriteItem",
    "transact_write_items": "TransactWriteItems",
}

_TARGET_PREFIX = "DynamoDB_20120810."
_CONTENT_TYPE = "application/x-amz-json-1.0"


def _encode_blob(value: object) -> str:
    # json.dumps calls this only for what it cannot encode itself: in DynamoDB's requests the
    # only such values are the B and BS blobs, which the wire carries as base64.
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    raise TypeError(f"cannot send {type(value).__name__} to DynamoDB")


def _decode_blobs(node: dict[str, Any]) -> dict[str, Any]:
    # json.loads' object_hook: an attribute value {"B": "..."} or {"BS": [...]} is the only
    # one-key object with a string (list) under those names (an item's attributes are maps).
    if len(node) == 1:
        if "B" in node and isinstance(node["B"], str):
            return {"B": base64.b64decode(node["B"])}
        if "BS" in node and isinstance(node["BS"], list):
            return {"BS": [base64.b64decode(v) for v in node["BS"]]}
    return node


def _loads(content: bytes) -> Any:
    """An answer's JSON with its blobs decoded. The object hook costs about as much again as
    the parse, so it runs only when a ``"B"`` or ``"BS"`` key can be there: JSON spells a key
    either literally or with ``\\u`` escapes, so an answer holding neither has no blob (a NUL
    byte: UTF-16 or UTF-32, which ``json.loads`` also reads, takes the hook too)."""
    if b'"B"' in content or b'"BS"' in content or b"\\u" in content or b"\x00" in content:
        return json.loads(content, object_hook=_decode_blobs)
    return json.loads(content)


#: Longest answer head read (status line and headers); DynamoDB's are a few hundred bytes.
_MAX_HEAD = 65536


def _request_bytes(host: str, headers: dict[str, str], body: bytes) -> bytes:
    """``POST /`` with ``headers`` and ``body``, head and body in one buffer."""
    lines = [f"POST / HTTP/1.1\r\nHost: {host}\r\nAccept-Encoding: identity\r\n"]
    lines.append(f"Content-Length: {len(body)}\r\n")
    for name, value in headers.items():
        # No header may end the head early or add one (a value from the environment, say).
        if "\r" in value or "\n" in value or "\r" in name or "\n" in name or ":" in name:
            raise ValueError(f"refusing to send header {name!r}: line break or colon")
        lines.append(f"{name}: {value}\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("latin-1") + body


class _Connection:
    """A kept-alive HTTP/1.1 connection to the endpoint: its socket and what was read past
    the end of the last answer (nothing, from a server that answers one request at a time)."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def close(self) -> None:
        self.sock.close()

    def reusable(self) -> bool:
        """Not closed by the server while idle: a kept-alive socket readable before a request
        was closed by the server (or holds garbage), as urllib3 checks before reusing one
        (poll, not select: select fails on descriptors past FD_SETSIZE)."""
        if self.buffer:
            return False
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        return not poller.poll(0)

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise http.client.IncompleteRead(bytes(self.buffer))
        self.buffer += data

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        taken = bytes(self.buffer[:count])
        del self.buffer[:count]
        return taken

    def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise http.client.LineTooLong("chunk size line")
            self._fill()
        return self._take(end + 2)[:-2]

    def read_answer(self) -> tuple[int, dict[str, str], bytes, bool]:
        """(status, headers with lower-case names, body, whether the connection must close).

        The body as ``Content-Length`` says, or chunked, or up to the end of the connection;
        interim 1xx answers are skipped."""
        version, status, headers = self._head()
        while 100 <= status < 200:
            version, status, headers = self._head()
        connection = headers.get("connection", "").lower()
        close = connection == "close" or (version == "HTTP/1.0" and connection != "keep-alive")
        encoding = headers.get("transfer-encoding", "").lower()
        if status in (204, 304):
            body = b""
        elif encoding and encoding != "identity":
            if encoding != "chunked":
                raise http.client.HTTPException(f"unsupported transfer-encoding {encoding!r}")
            body = self._chunked()
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length < 0:
                raise ValueError("negative Content-Length")
            body = self._take(length)
        else:  # delimited by the end of the connection
            body, close = self._rest(), True
        return status, headers, body, close

    def _head(self) -> tuple[str, int, dict[str, str]]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise http.client.LineTooLong("answer head")
            self._fill()
        head = self._take(end + 4)[:-4].decode("latin-1").split("\r\n")
        version, _, rest = head[0].partition(" ")
        code = rest[:3]
        if version not in ("HTTP/1.1", "HTTP/1.0") or not code.isdigit() or len(code) != 3:
            raise http.client.BadStatusLine(head[0])
        headers: dict[str, str] = {}
        for line in head[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                raise http.client.BadStatusLine(line)
            headers[name.strip().lower()] = value.strip()
        return version, int(code), headers

    def _rest(self) -> bytes:
        while True:
            try:
                self._fill()
            except http.client.IncompleteRead:
                break
        rest = bytes(self.buffer)
        self.buffer.clear()
        return rest

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int(self._line().split(b";", 1)[0].strip(), 16)
            if size == 0:
                while self._line():  # trailers, up to the empty line
                    pass
                return b"".join(chunks)
            chunks.append(self._take(size))
            if self._take(2) != b"\r\n":
                raise http.client.HTTPException("chunk not followed by CRLF")


class _Response:
    """What botocore's retry checkers read of an HTTP answer."""

    __slots__ = ("content", "headers", "status_code")

    def __init__(self, status_code: int, headers: dict[str, str], content: bytes) -> None:
        self.status_code = status_code
        self.headers = headers
        self.content = content


class _Meta:
    """``client.meta``: the botocore client's, with an emitter of the lean path's own."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.events = HierarchicalEmitter()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class LeanDynamoDB:
    """``botocore``'s DynamoDB client, with the hot operations sent by a lean path."""

    def __init__(
        self,
        client: Any,
        *,
        max_attempts: int,
        connect_timeout_s: float,
        read_timeout_s: float,
        max_idle_connections: int = 16,
    ) -> None:
        self._client = client
        self.meta = _Meta(client.meta)
        self.exceptions = client.exceptions
        self._region = client.meta.region_name
        self._endpoint = client.meta.endpoint_url.rstrip("/")
        split = urlsplit(self._endpoint)
        if split.scheme not in ("http", "https") or not split.hostname:
            raise ValueError(f"unusable DynamoDB endpoint {self._endpoint!r}")
        # The lean path talks to the endpoint directly; behind a proxy it would not get
        # through, so refuse at start-up rather than fail every call.
        proxies = getproxies()
        if (client.meta.config.proxies or proxies.get(split.scheme)) and not proxy_bypass(
            split.hostname
        ):
            raise ValueError(
                "a proxy is configured for the DynamoDB endpoint: the lean client does not use "
                "proxies, set URR_DYNAMODB_CLIENT=botocore"
            )
        self._https = split.scheme == "https"
        self._host = split.hostname
        self._port = split.port or (443 if self._https else 80)
        self._url = self._endpoint + "/"
        self._host_header = host_header(self._host, self._port, https=self._https)
        self._signer = SigV4Signer(
            region=self._region,
            service="dynamodb",
            host=self._host_header,
        )
        self._connect_timeout_s = connect_timeout_s
        self._read_timeout_s = read_timeout_s
        self._max_idle = max_idle_connections
        self._idle: list[_Connection] = []
        self._idle_lock = threading.Lock()
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            from botocore.httpsession import get_cert_path

            self._ssl = ssl.create_default_context(cafile=get_cert_path(True))
        # The client's own credential provider chain, resolved once (refreshable credentials
        # refresh themselves inside get_frozen_credentials()).
        self._credentials = client._request_signer._credentials
        service = client.meta.service_model
        self._models = {op: service.operation_model(op) for op in HOT_OPERATIONS.values()}
        # The error codes whose members botocore copies into error_response (Item,
        # CancellationReasons...); other errors carry only Error and ResponseMetadata.
        self._modelled = {
            op: frozenset(shape.name for shape in model.error_shapes)
            for op, model in self._models.items()
        }
        self._retry = standard.RetryPolicy(
            retry_checker=standard.StandardRetryConditions(max_attempts=max_attempts),
            retry_backoff=standard.ExponentialBackoff(),
        )
        self._quota = standard.RetryQuotaChecker(quota.RetryQuota())
        self._max_attempts = max_attempts

    # ---- the hot operations -------------------------------------------------------------

    def get_item(self, **params: Any) -> dict[str, Any]:
        return self._call("GetItem", params)

    def put_item(self, **params: Any) -> dict[str, Any]:
        return self._call("PutItem", params)

    def update_item(self, **params: Any) -> dict[str, Any]:
        return self._call("UpdateItem", params)

    def delete_item(self, **params: Any) -> dict[str, Any]:
        return self._call("DeleteItem", params)

    def batch_get_item(self, **params: Any) -> dict[str, Any]:
        return self._call("BatchGetItem", params)

    def batch_write_item(self, **params: Any) -> dict[str, Any]:
        return self._call("BatchWriteItem", params)

    def transact_write_items(self, **params: Any) -> dict[str, Any]:
        return self._call("TransactWriteItems", params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def close(self) -> None:
        with self._idle_lock:
            idle, self._idle = self._idle, []
        for connection in idle:
            connection.close()
        self._client.close()

    # ---- one call -------------------------------------------------------------------------

    def _call(self, operation: str, params: dict[str, Any]) -> dict[str, Any]:
        model = self._models[operation]
        context: dict[str, Any] = {"retries": {"attempt": 1, "max": self._max_attempts}}
        events = self.meta.events
        events.emit(
            f"provide-client-params.dynamodb.{operation}",
            params=params,
            model=model,
            context=context,
        )
        events.emit(
            f"before-call.dynamodb.{operation}", params=params, model=model, context=context
        )
        body = json.dumps(params, separators=(",", ":"), default=_encode_blob).encode()
        attempt = 1
        while True:
            response: _Response | None = None
            caught: Exception | None = None
            try:
                response = self._send(operation, body)
            except (BotoConnectionError, HTTPClientError) as exc:
                caught = exc
            parsed: dict[str, Any] | None = None
            if response is not None:
                parsed = self._parse(response, attempt - 1, self._modelled[operation])
                good = response.status_code == 200 and self._crc_ok(response)
                if good:
                    # botocore hands this its request context, a dict (the stub says otherwise).
                    self._quota.release_retry_quota(context, response)  # type: ignore[arg-type]
                    return parsed
            retry = standard.RetryContext(
                attempt_number=attempt,
                operation_model=model,
                parsed_response=parsed,
                http_response=response,
                caught_exception=caught,
                request_context=context,
            )
            if not (self._retry.should_retry(retry) and self._quota.acquire_retry_quota(retry)):
                if caught is not None:
                    raise caught
                if response is None or parsed is None:  # _send answers or raises, never neither
                    raise ConnectionClosedError(endpoint_url=self._url)
                parsed["ResponseMetadata"].update(retry.get_retry_metadata())
                if response.status_code == 200:
                    return parsed  # a CRC mismatch out of attempts: botocore answers it too
                self._raise(operation, model, parsed)
            time.sleep(self._retry.compute_retry_delay(retry))
            attempt += 1
            context["retries"]["attempt"] = attempt

    def _send(self, operation: str, body: bytes) -> _Response:
        headers = {
            "Content-Type": _CONTENT_TYPE,
            "X-Amz-Target": _TARGET_PREFIX + operation,
        }
        trace_id = os.environ.get("_X_AMZN_TRACE_ID")
        if trace_id and "AWS_LAMBDA_FUNCTION_NAME" in os.environ:
            headers["X-Amzn-Trace-Id"] = quote(trace_id, safe="-=;:+&[]{}\"',")
        if self._credentials is None:  # as botocore says when its chain found nothing
            raise NoCredentialsError
        # Signed per attempt (a retry gets a fresh date), with the day's key cached.
        self._signer.sign(headers, body, self._credentials.get_frozen_credentials())
        request = _request_bytes(self._host_header, headers, body)
        connection = self._connection()
        try:
            # The head and the body in one write: http.client sends them in two (its
            # _send_output joins a small body only in Python 2), two segments with
            # TCP_NODELAY and two wake-ups of the server.
            connection.sock.sendall(request)
            status, answer_headers, content, will_close = connection.read_answer()
        except TimeoutError as exc:
            connection.close()
            raise ReadTimeoutError(endpoint_url=self._url, error=exc) from exc
        except (http.client.HTTPException, OSError, ValueError) as exc:
            connection.close()
            raise ConnectionClosedError(endpoint_url=self._url, error=exc) from exc
        if will_close:
            connection.close()
        else:
            self._release(connection)
        return _Response(status, answer_headers, content)

    def _connection(self) -> _Connection:
        with self._idle_lock:
            while self._idle:
                connection = self._idle.pop()
                if connection.reusable():
                    return connection
                connection.close()
        try:
            sock = socket.create_connection(
                (self._host, self._port), timeout=self._connect_timeout_s
            )
        except TimeoutError as exc:
            raise ConnectTimeoutError(endpoint_url=self._url, error=exc) from exc
        except OSError as exc:
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        try:
            if self._ssl is not None:
                sock = self._ssl.wrap_socket(sock, server_hostname=self._host)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(endpoint_url=self._url, error=exc) from exc
        except OSError as exc:
            sock.close()
            raise EndpointConnectionError(endpoint_url=self._url, error=exc) from exc
        sock.settimeout(self._read_timeout_s)
        return _Connection(sock)

    def _release(self, connection: _Connection) -> None:
        with self._idle_lock:
            if len(self._idle) < self._max_idle:
                self._idle.append(connection)
                return
        connection.close()

    @staticmethod
    def _crc_ok(response: _Response) -> bool:
        checksum = response.headers.get("x-amz-crc32")
        return checksum is None or zlib.crc32(response.content) & 0xFFFFFFFF == int(checksum)

    @staticmethod
    def _parse(response: _Response, retries: int, modelled: frozenset[str]) -> dict[str, Any]:
        try:
            parsed: dict[str, Any] = _loads(response.content) if response.content else {}
        except ValueError:
            parsed = {"message": response.content.decode("utf-8", "replace")}
        metadata = {
            "RequestId": response.headers.get("x-amzn-requestid", ""),
            "HTTPStatusCode": response.status_code,
            "HTTPHeaders": response.headers,
            "RetryAttempts": retries,
        }
        if response.status_code < 300:
            parsed["ResponseMetadata"] = metadata
            return parsed
        # botocore's JSON error shape: the code from __type (after '#'), the message from
        # message/Message, and the modelled error's own members (Item, CancellationReasons).
        code = parsed.pop("__type", None) or str(response.status_code)
        if ":" in code:
            code = code.split(":", 1)[0]
        if "#" in code:
            code = code.rsplit("#", 1)[1]
        message = parsed.get("message", parsed.get("Message", ""))
        error = {"Error": {"Message": message, "Code": code}, "ResponseMetadata": metadata}
        return {**parsed, **error} if code in modelled else error

    def _raise(self, operation: str, model: Any, parsed: dict[str, Any]) -> None:
        code = parsed["Error"]["Code"]
        raise self.exceptions.from_code(code)(parsed, operation)
