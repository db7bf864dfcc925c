"""The lean DynamoDB client (``urr_vwr_lambda.dynamodb``) against dynalite and botocore.

Answers and errors are compared with botocore's own client on the same dynalite. Throttling,
5xx answers, lost connections and corrupted bodies cannot be had from dynalite, so those
tests use a small real HTTP server on a loopback socket that answers from a script (and a
``ReturnValuesOnConditionCheckFailure`` item too: dynalite ignores that parameter).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import ssl
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError
from hypothesis import given, settings
from hypothesis import strategies as st

from urr_common.settings import SettingsError, load_settings
from urr_devstack.tls import TestCa
from urr_vwr_lambda.dynamodb import LeanDynamoDB, _decode_blobs, _loads
from urr_vwr_lambda.runtime import VwrRuntime
from urr_vwr_lambda.settings import VwrSettings

OPENED: list[Any] = []


@pytest.fixture(autouse=True)
def _close_clients() -> Iterator[None]:
    yield
    while OPENED:
        OPENED.pop().close()


def botocore_client(endpoint: str, *, token: str | None = None) -> Any:
    client = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=endpoint,
        region_name="eu-west-1",
        aws_access_key_id="AKIDTEST",
        aws_secret_access_key="secret",
        aws_session_token=token,
        config=Config(retries={"mode": "standard", "max_attempts": 3}, read_timeout=2),
    )
    OPENED.append(client)
    return client


def lean_client(endpoint: str, *, token: str | None = None, read_timeout_s: float = 2) -> Any:
    lean = LeanDynamoDB(
        botocore_client(endpoint, token=token),
        max_attempts=3,
        connect_timeout_s=1,
        read_timeout_s=read_timeout_s,
    )
    OPENED.append(lean)
    return lean


@pytest.fixture
def table(dynamodb: Any) -> str:
    name = f"lean-{uuid.uuid4().hex[:10]}"
    dynamodb.create_table(
        TableName=name,
        KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    return name


def without_metadata(answer: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in answer.items() if k != "ResponseMetadata"}


def test_the_hot_operations_answer_as_botocore_does(dynamodb_endpoint: str, table: str) -> None:
    boto = botocore_client(dynamodb_endpoint)
    lean = lean_client(dynamodb_endpoint)
    item = {
        "pk": {"S": "a"},
        "n": {"N": "1"},
        "salt": {"B": b"\x00\xffsalt"},
        "salts": {"BS": [b"x", b"\x01y"]},
        "nested": {"M": {"inner": {"L": [{"B": b"deep"}, {"S": "s"}]}}},
    }
    for name, client in (("boto", boto), ("lean", lean)):
        pk = {"S": f"{name}-x"}
        client.put_item(TableName=table, Item={**item, "pk": pk})
    answers: dict[str, list[Any]] = {"boto": [], "lean": []}
    for name, client in (("boto", boto), ("lean", lean)):
        pk = {"S": f"{name}-x"}
        got = answers[name]
        got.append(client.get_item(TableName=table, Key={"pk": pk}, ConsistentRead=True))
        got.append(
            client.update_item(
                TableName=table,
                Key={"pk": pk},
                UpdateExpression="ADD n :one SET more = :b",
                ExpressionAttributeValues={":one": {"N": "1"}, ":b": {"B": b"more"}},
                ReturnValues="ALL_NEW",
            )
        )
        got.append(
            client.batch_get_item(
                RequestItems={table: {"Keys": [{"pk": pk}], "ConsistentRead": True}}
            )
        )
        got.append(
            client.batch_write_item(
                RequestItems={table: [{"PutRequest": {"Item": {"pk": {"S": f"{name}-y"}}}}]}
            )
        )
        got.append(client.delete_item(TableName=table, Key={"pk": pk}, ReturnValues="ALL_OLD"))
    # Each client's items carry its own key; otherwise the answers are the same.
    lean_answers = json.loads(
        json.dumps([without_metadata(a) for a in answers["lean"]], default=repr)
    )
    boto_answers = json.loads(
        json.dumps([without_metadata(a) for a in answers["boto"]], default=repr).replace(
            "boto-", "lean-"
        )
    )
    assert lean_answers == boto_answers
    assert answers["lean"][0]["Item"]["salt"] == {"B": b"\x00\xffsalt"}
    assert answers["lean"][0]["Item"]["salts"] == {"BS": [b"x", b"\x01y"]}
    assert answers["lean"][1]["Attributes"]["more"] == {"B": b"more"}
    for boto_answer, lean_answer in zip(answers["boto"], answers["lean"], strict=True):
        meta = lean_answer["ResponseMetadata"]
        assert meta.keys() == boto_answer["ResponseMetadata"].keys()
        assert meta["HTTPStatusCode"] == 200
        assert meta["RetryAttempts"] == 0
        assert meta["RequestId"]


def error_of(call: Any, **params: Any) -> ClientError:
    with pytest.raises(ClientError) as caught:
        call(**params)
    return caught.value


def test_errors_are_botocores_classes_with_its_error_response(
    dynamodb_endpoint: str, table: str
) -> None:
    boto = botocore_client(dynamodb_endpoint)
    lean = lean_client(dynamodb_endpoint)
    boto.put_item(TableName=table, Item={"pk": {"S": "held"}})
    cases: list[tuple[str, dict[str, Any]]] = [
        (
            "put_item",
            {
                "TableName": table,
                "Item": {"pk": {"S": "held"}},
                "ConditionExpression": "attribute_not_exists(pk)",
            },
        ),
        (
            "transact_write_items",
            {
                "TransactItems": [
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {"pk": {"S": "held"}},
                            "ConditionExpression": "attribute_not_exists(pk)",
                        }
                    },
                    {"Put": {"TableName": table, "Item": {"pk": {"S": "free"}}}},
                ]
            },
        ),
        ("get_item", {"TableName": f"{table}-missing", "Key": {"pk": {"S": "x"}}}),
        ("update_item", {"TableName": table, "Key": {"pk": {"S": "x"}}, "UpdateExpression": "SET"}),
    ]
    for method, params in cases:
        expected = error_of(getattr(boto, method), **params)
        got = error_of(getattr(lean, method), **params)
        # Each botocore client has its own classes: the same name, both ClientErrors.
        assert type(got).__name__ == type(expected).__name__, method
        assert without_metadata(dict(got.response)) == without_metadata(dict(expected.response))
        assert got.operation_name == expected.operation_name
        assert got.response["ResponseMetadata"]["HTTPStatusCode"] == 400
    # dynalite has no transactions (the store falls back, store.py): the same refusal from both.
    assert error_of(lean.transact_write_items, **cases[1][1]).response["Error"]["Code"] == (
        "UnknownOperationException"
    )
    assert isinstance(
        error_of(lean.put_item, **cases[0][1]), lean.exceptions.ConditionalCheckFailedException
    )


def test_the_rest_of_the_client_is_botocores(dynamodb_endpoint: str, table: str) -> None:
    lean = lean_client(dynamodb_endpoint)
    assert table in lean.list_tables()["TableNames"]
    assert lean.meta.region_name == "eu-west-1"
    seen: list[str] = []
    lean.meta.events.register("before-call.dynamodb", lambda model, **_: seen.append(model.name))
    lean.get_item(TableName=table, Key={"pk": {"S": "x"}})
    assert seen == ["GetItem"]
    lean.close()


def test_the_runtime_builds_the_client_its_setting_names(
    vwr_settings: VwrSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    lean_settings = vwr_settings.model_copy(update={"dynamodb_client": "lean"})
    lean: Any = VwrRuntime(lean_settings).dynamodb
    OPENED.append(lean)
    assert isinstance(lean, LeanDynamoDB)
    plain: Any = VwrRuntime(
        vwr_settings.model_copy(update={"dynamodb_client": "botocore"})
    ).dynamodb
    OPENED.append(plain)
    assert not isinstance(plain, LeanDynamoDB)
    monkeypatch.delenv("URR_DYNAMODB_CLIENT", raising=False)
    assert load_settings(VwrSettings).dynamodb_client == "lean"
    monkeypatch.setenv("URR_DYNAMODB_CLIENT", "boto4")
    with pytest.raises(SettingsError, match="DYNAMODB_CLIENT"):
        load_settings(VwrSettings)
    monkeypatch.setenv("URR_DYNAMODB_CLIENT", "botocore")
    assert load_settings(VwrSettings).dynamodb_client == "botocore"


def test_a_proxy_it_would_bypass_is_refused_at_start_up(
    dynamodb_endpoint: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("NO_PROXY", "")
    with pytest.raises(ValueError, match="URR_DYNAMODB_CLIENT=botocore"):
        lean_client(dynamodb_endpoint)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    lean_client(dynamodb_endpoint)  # the endpoint is exempt: no proxy to bypass


# ---- a scripted stand-in for what dynalite cannot do ----------------------------------------


@dataclass
class Scripted:
    """A loopback HTTP server answering each request with the next scripted action."""

    actions: list[Any]
    requests: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    connections: int = 0
    #: Serve TLS with this context (the endpoint is then ``https://localhost:port``).
    tls: ssl.SSLContext | None = None

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        port = self.sock.getsockname()[1]
        self.endpoint = f"https://localhost:{port}" if self.tls else f"http://127.0.0.1:{port}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            if self.tls is not None:
                try:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    conn.close()  # the client refused our certificate
                    continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                head, buffer = buffer.split(b"\r\n\r\n", 1)
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
                length = int(headers.get("content-length", "0"))
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                body, buffer = buffer[:length], buffer[length:]
                self.requests.append((headers, body))
                action = self.actions.pop(0) if self.actions else (200, {})
                if action == "drop":
                    return  # closes the connection without an answer
                if action == "hang":
                    time.sleep(3)
                    return
                if action[0] in ("raw", "raw-close"):  # the answer's bytes, as given
                    conn.sendall(action[1])
                    if action[0] == "raw-close":
                        return
                    continue
                close = action[0] == "close"
                if close:
                    action = action[1:]
                status, payload, *rest = action
                raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                crc = rest[0] if rest else zlib.crc32(raw) & 0xFFFFFFFF
                conn.sendall(
                    f"HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.0\r\n"
                    f"x-amzn-RequestId: req-{len(self.requests)}\r\nx-amz-crc32: {crc}\r\n"
                    f"Content-Length: {len(raw)}\r\n\r\n".encode()
                    + raw
                )
                if close:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    servers: list[Scripted] = []

    def make(*actions: Any) -> Scripted:
        server = Scripted(list(actions))
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.close()


THROTTLED = (
    400,
    {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException", "message": "slow"},
)
OVER = (
    400,
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "over",
    },
)
ITEM = {"Item": {"pk": {"S": "a"}, "salt": {"B": base64.b64encode(b"s").decode()}}}


def test_throttling_and_5xx_are_retried_with_botocores_attempts(scripted: Any) -> None:
    server = scripted(THROTTLED, (503, b"unavailable"), (200, ITEM))
    lean = lean_client(server.endpoint)
    answer = lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert answer["Item"]["salt"] == {"B": b"s"}
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert len(server.requests) == 3

    server = scripted(OVER, OVER, OVER, (200, ITEM))
    lean = lean_client(server.endpoint)
    error = error_of(lean.update_item, TableName="t", Key={"pk": {"S": "a"}})
    assert isinstance(error, lean.exceptions.ProvisionedThroughputExceededException)
    assert error.response["Error"] == {
        "Code": "ProvisionedThroughputExceededException",
        "Message": "over",
    }
    assert error.response["ResponseMetadata"]["MaxAttemptsReached"] is True
    assert error.response["ResponseMetadata"]["RetryAttempts"] == 2
    assert len(server.requests) == 3  # max_attempts, not one more


def test_a_refusal_is_not_retried_and_keeps_its_item(scripted: Any) -> None:
    failed = {
        "__type": "com.amazonaws.dynamodb.v20120810#ConditionalCheckFailedException",
        "message": "The conditional request failed",
        "Item": {"pk": {"S": "a"}, "salt": {"B": base64.b64encode(b"old").decode()}},
    }
    server = scripted((400, failed))
    lean = lean_client(server.endpoint)
    error = error_of(
        lean.put_item,
        TableName="t",
        Item={"pk": {"S": "a"}},
        ReturnValuesOnConditionCheckFailure="ALL_OLD",
    )
    assert dict(error.response)["Item"] == {"pk": {"S": "a"}, "salt": {"B": b"old"}}
    assert error.response["Error"]["Code"] == "ConditionalCheckFailedException"
    assert len(server.requests) == 1


def test_a_cancelled_transaction_keeps_its_reasons(scripted: Any) -> None:
    cancelled = {
        "__type": "com.amazonaws.dynamodb.v20120810#TransactionCanceledException",
        "Message": "Transaction cancelled, please refer cancellation reasons for specific reasons",
        "CancellationReasons": [
            {
                "Code": "ConditionalCheckFailed",
                "Message": "The conditional request failed",
                "Item": {"pk": {"S": "a"}, "salt": {"B": base64.b64encode(b"old").decode()}},
            },
            {"Code": "None"},
        ],
    }
    server = scripted((400, cancelled))
    lean = lean_client(server.endpoint)
    error = error_of(lean.transact_write_items, TransactItems=[])
    assert isinstance(error, lean.exceptions.TransactionCanceledException)
    assert error.response["Error"]["Message"].startswith("Transaction cancelled")
    reasons = error.response["CancellationReasons"]
    assert [r["Code"] for r in reasons] == ["ConditionalCheckFailed", "None"]
    assert reasons[0]["Item"]["salt"] == {"B": b"old"}
    assert len(server.requests) == 1


def test_lost_connections_and_a_corrupt_body_are_retried(scripted: Any) -> None:
    server = scripted("drop", (200, ITEM, 12345), (200, ITEM))
    lean = lean_client(server.endpoint)
    answer = lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert answer["ResponseMetadata"]["RetryAttempts"] == 2
    assert len(server.requests) == 3

    server = scripted("drop", "drop", "drop")
    lean = lean_client(server.endpoint)
    with pytest.raises(ConnectionClosedError):
        lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert len(server.requests) == 3


def test_a_silent_server_times_out_and_a_closed_port_is_a_connection_error(scripted: Any) -> None:
    server = scripted("hang", (200, ITEM))
    lean = lean_client(server.endpoint, read_timeout_s=0.3)
    started = time.monotonic()
    assert lean.get_item(TableName="t", Key={"pk": {"S": "a"}})["Item"]["pk"] == {"S": "a"}
    assert time.monotonic() - started < 2.5
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(EndpointConnectionError):
        lean_client(f"http://127.0.0.1:{port}").get_item(TableName="t", Key={"pk": {"S": "a"}})


def test_garbage_from_the_server_is_a_client_error_not_a_crash(scripted: Any) -> None:
    server = scripted((400, b"<html>not json</html>"))
    error = error_of(lean_client(server.endpoint).get_item, TableName="t", Key={"pk": {"S": "a"}})
    assert error.response["Error"]["Code"] == "400"
    assert "not json" in error.response["Error"]["Message"]


def test_requests_are_signed_with_the_session_token_and_reuse_one_connection(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "vwr-api")
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1-abc;Parent=def;Sampled=1")
    server = scripted((200, ITEM), (200, ITEM), (200, ITEM))
    lean = lean_client(server.endpoint, token="session-token")
    for _ in range(3):
        lean.put_item(TableName="t", Item={"pk": {"S": "a"}, "b": {"B": b"\x00\x01"}})
    assert server.connections == 1
    headers, body = server.requests[0]
    assert headers["x-amz-target"] == "DynamoDB_20120810.PutItem"
    assert headers["content-type"] == "application/x-amz-json-1.0"
    assert headers["x-amz-security-token"] == "session-token"
    assert headers["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDTEST/")
    assert "/eu-west-1/dynamodb/aws4_request" in headers["authorization"]
    assert "x-amz-security-token" in headers["authorization"]
    assert headers["x-amzn-trace-id"] == "Root=1-abc;Parent=def;Sampled=1"
    assert json.loads(body)["Item"]["b"] == {"B": base64.b64encode(b"\x00\x01").decode()}


def sigv4_signature(headers: dict[str, str], body: bytes, secret: str) -> tuple[str, str]:
    """The signature a server computes from the request as it arrived (AWS's SigV4 spec,
    written out here, not botocore's code): (expected, sent)."""
    authorization = headers["authorization"]
    fields = dict(part.strip().split("=", 1) for part in authorization.split(" ", 1)[1].split(","))
    signed = fields["SignedHeaders"].split(";")
    canonical = "\n".join(
        [
            "POST",
            "/",
            "",
            "".join(f"{name}:{headers[name].strip()}\n" for name in signed),
            ";".join(signed),
            hashlib.sha256(body).hexdigest(),
        ]
    )
    scope = fields["Credential"].split("/", 1)[1]
    day, region, service, _ = scope.split("/")
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            headers["x-amz-date"],
            scope,
            hashlib.sha256(canonical.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    return expected, fields["Signature"]


def test_the_signature_verifies_on_the_request_as_it_arrived(scripted: Any) -> None:
    server = scripted((200, ITEM), (200, ITEM))
    lean = lean_client(server.endpoint, token="session-token")
    lean.update_item(
        TableName="t",
        Key={"pk": {"S": "ä €"}},
        UpdateExpression="ADD n :one",
        ExpressionAttributeValues={":one": {"N": "1"}, ":b": {"B": b"\xff"}},
    )
    lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    for headers, body in server.requests:
        signed = dict(
            part.strip().split("=", 1)
            for part in headers["authorization"].split(" ", 1)[1].split(",")
        )["SignedHeaders"].split(";")
        assert {"host", "x-amz-date", "x-amz-security-token", "x-amz-target"} <= set(signed)
        expected, sent = sigv4_signature(headers, body, "secret")
        assert sent == expected
        # A tampered body would not verify: the check above is not vacuous.
        assert sigv4_signature(headers, body + b" ", "secret")[0] != sent


def test_a_connection_the_server_closed_while_idle_is_not_reused(scripted: Any) -> None:
    server = scripted(("close", 200, ITEM), (200, ITEM))
    lean = lean_client(server.endpoint)
    lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    time.sleep(0.2)  # the server's FIN reaches the idle socket
    answer = lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    # Not sent on the dead socket and retried: found dead before use, a new one opened.
    assert answer["ResponseMetadata"]["RetryAttempts"] == 0
    assert server.connections == 2


# ---- the client's own HTTP/1.1 exchange --------------------------------------------------------

ITEM_BODY = json.dumps(ITEM).encode()


def test_chunked_close_delimited_and_interim_answers_are_read(scripted: Any) -> None:
    half = len(ITEM_BODY) // 2
    chunked = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        + f"{half:x};ext=1\r\n".encode()
        + ITEM_BODY[:half]
        + b"\r\n"
        + f"{len(ITEM_BODY) - half:X}\r\n".encode()
        + ITEM_BODY[half:]
        + b"\r\n0\r\nx-trailer: t\r\n\r\n"
    )
    interim = b"HTTP/1.1 100 Continue\r\n\r\n" + (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(ITEM_BODY)}\r\n\r\n".encode() + ITEM_BODY
    )
    until_close = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.0\r\n\r\n" + ITEM_BODY
    server = scripted(("raw", chunked), ("raw", interim), ("raw-close", until_close), (200, ITEM))
    lean = lean_client(server.endpoint)
    for _ in range(4):
        answer = lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
        assert answer["Item"]["salt"] == {"B": b"s"}
        assert answer["ResponseMetadata"]["RetryAttempts"] == 0
    # The chunked and interim answers kept the connection; the one read to the end closed it.
    assert server.connections == 2


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 999\r\n\r\n{}",  # shorter than it says
        b"SMTP 220 hello\r\n\r\n",  # not HTTP
        b"HTTP/1.1 2x0 OK\r\nContent-Length: 0\r\n\r\n",  # no status code
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",  # a header without its colon
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",  # bad chunk size
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",  # unsupported coding
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",  # negative length
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70000,  # a head that never ends
    ],
)
def test_a_malformed_answer_is_a_lost_connection_retried(scripted: Any, answer: bytes) -> None:
    server = scripted(("raw-close", answer), (200, ITEM))
    lean = lean_client(server.endpoint)
    got = lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert got["ResponseMetadata"]["RetryAttempts"] == 1
    assert server.connections == 2  # the connection that carried it was not reused

    server = scripted(*[("raw-close", answer)] * 3)
    with pytest.raises(ConnectionClosedError):
        lean_client(server.endpoint).get_item(TableName="t", Key={"pk": {"S": "a"}})


class CountingSocket:
    """A client socket that counts its writes (the real one does the work)."""

    writes: ClassVar[list[bytes]] = []

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def sendall(self, data: bytes) -> None:
        CountingSocket.writes.append(bytes(data))
        self._sock.sendall(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


def test_each_request_is_one_write_with_its_whole_body(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = socket.create_connection
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: CountingSocket(real(*a, **k)))
    CountingSocket.writes.clear()
    server = scripted((200, ITEM), (200, ITEM))
    lean = lean_client(server.endpoint)
    big = "x" * 5000  # larger than a segment: still one write
    lean.put_item(TableName="t", Item={"pk": {"S": "a"}, "big": {"S": big}})
    lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert len(CountingSocket.writes) == 2
    for (headers, body), write in zip(server.requests, CountingSocket.writes, strict=True):
        assert write.endswith(b"\r\n\r\n" + body)
        assert int(headers["content-length"]) == len(body)
        assert headers["host"] == server.endpoint.removeprefix("http://")
    assert json.loads(server.requests[0][1])["Item"]["big"] == {"S": big}


def test_a_header_that_would_split_the_request_is_refused(
    scripted: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A trace id with a line break (the environment is not ours to trust) is quoted; a
    # session token with one would add a header of its own: refused before anything is sent.
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "vwr-api")
    monkeypatch.setenv("_X_AMZN_TRACE_ID", "Root=1\r\nX-Injected: yes")
    server = scripted((200, ITEM), (200, ITEM))
    lean = lean_client(server.endpoint)
    lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
    headers, _ = server.requests[0]
    assert "x-injected" not in headers
    assert headers["x-amzn-trace-id"] == "Root=1%0D%0AX-Injected:%20yes"
    evil = lean_client(server.endpoint, token="tok\r\nX-Injected: yes")
    with pytest.raises(ValueError, match="line break"):
        evil.get_item(TableName="t", Key={"pk": {"S": "a"}})
    assert len(server.requests) == 1


@pytest.mark.parametrize("served_name", ["localhost", "elsewhere.example"])
def test_https_endpoints_are_verified_and_kept_alive(tmp_path: Path, served_name: str) -> None:
    ca = TestCa(tmp_path)
    issued = ca.issue(served_name, [served_name])
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(issued.cert_file, issued.key_file)
    server = Scripted([(200, ITEM), (200, ITEM)], tls=served)
    try:
        lean = lean_client(server.endpoint)
        lean._ssl = ssl.create_default_context(cafile=ca.ca_file)  # trust this test's CA
        if served_name != "localhost":  # a certificate for another name: never sent to
            with pytest.raises(EndpointConnectionError):
                lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
            assert server.requests == []
            return
        for _ in range(2):
            answer = lean.get_item(TableName="t", Key={"pk": {"S": "a"}})
            assert answer["Item"]["salt"] == {"B": b"s"}
        assert server.connections == 1
        headers, _ = server.requests[0]
        assert headers["host"] == server.endpoint.removeprefix("https://")
    finally:
        server.close()


# ---- the answer's JSON: the blob hook only where a blob can be ---------------------------------

_SCALAR = st.one_of(
    st.builds(lambda t: {"S": t}, st.text(max_size=12)),
    st.builds(lambda n: {"N": str(n)}, st.integers()),
    st.builds(lambda b: {"B": base64.b64encode(b).decode()}, st.binary(max_size=8)),
    st.builds(
        lambda bs: {"BS": [base64.b64encode(b).decode() for b in bs]},
        st.lists(st.binary(max_size=4), max_size=3),
    ),
    st.builds(lambda v: {"BOOL": v}, st.booleans()),
    st.just({"NULL": True}),
)
_VALUE = st.recursive(
    _SCALAR,
    lambda inner: st.one_of(
        st.builds(lambda m: {"M": m}, st.dictionaries(st.text(max_size=6), inner, max_size=3)),
        st.builds(lambda v: {"L": v}, st.lists(inner, max_size=3)),
    ),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(
    item=st.dictionaries(st.text(max_size=6), _VALUE, max_size=4),
    ascii_only=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-16", "utf-32"]),
)
def test_answers_decode_the_same_with_or_without_the_shortcut(
    item: dict[str, Any], ascii_only: bool, encoding: str
) -> None:
    raw = json.dumps({"Item": item}, ensure_ascii=ascii_only).encode(encoding)
    assert _loads(raw) == json.loads(raw, object_hook=_decode_blobs)


def test_a_blob_key_spelled_with_an_escape_is_still_a_blob() -> None:
    escaped = b'{"Item":{"salt":{"\\u0042":"c2FsdA=="},"set":{"\\u0042S":["AA=="]}}}'
    assert _loads(escaped) == {"Item": {"salt": {"B": b"salt"}, "set": {"BS": [b"\x00"]}}}
    plain = b'{"Item":{"flag":{"BOOL":true},"n":{"N":"1"}}}'
    assert _loads(plain) == {"Item": {"flag": {"BOOL": True}, "n": {"N": "1"}}}
