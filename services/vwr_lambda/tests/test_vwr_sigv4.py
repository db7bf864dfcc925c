"""The lean client's SigV4 signer (``urr_common.sigv4``): AWS's published test vectors,
byte equality with botocore's ``SigV4Auth`` over fuzzed requests, the day's key cache, and a
real server (moto with IAM authentication on) that accepts its signatures and refuses tampered
ones."""

from __future__ import annotations

import datetime
import http.client
import json
import string
import uuid
from collections.abc import Iterator
from unittest import mock
from urllib.parse import urlsplit

import boto3
import botocore.auth
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import ReadOnlyCredentials
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from urr_common import sigv4
from urr_common.sigv4 import Credentials, SigV4Signer, amz_date, host_header
from urr_devstack.procs import free_port, moto_server
from urr_devstack.testing import _http_server
from urr_vwr_lambda.dynamodb import LeanDynamoDB

# ---- AWS's SigV4 test suite (aws-sig-v4-test-suite), the POST / cases --------------------------

SUITE_KEY = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", None)
SUITE_TIME = datetime.datetime(2015, 8, 30, 12, 36, tzinfo=datetime.UTC).timestamp()
SUITE_TOKEN = (
    "AQoDYXdzEPT//////////wEXAMPLEtc764bNrC9SAPBSM22wDOk4x4HIZ8j4FZTwdQWLWsKWHGBuFqwAeMicRXmxfpS"
    "PfIeoIYRqTflfKD8YUuwthAx7mSEI/qkPpKPi/kMcGdQrmGdeehM4IC1NtBmUpp2wUE8phUZampKsburEDy0KPkyQDYwT"
    "7WZ0wq5VSXDvp75YU9HFvlRd8Tx6q6fE8YQcHNVXAkiY9q6d+xo0rKwT38xVqr7ZD0u0iPPkUL64lIZbqBAz+scqKmlzm"
    "8FDrypNC9Yjc8fPOLn9FX9KSYvKTr4rvx3iSIlTJabIQwj2ICCR/oLxBA=="
)
SUITE_SCOPE = "AKIDEXAMPLE/20150830/us-east-1/service/aws4_request"


@pytest.mark.parametrize(
    ("name", "headers", "body", "token", "signed", "signature"),
    [
        (
            "post-vanilla",
            {},
            b"",
            None,
            "host;x-amz-date",
            "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
        ),
        (
            "post-x-www-form-urlencoded",
            {"Content-Type": "application/x-www-form-urlencoded"},
            b"Param1=value1",
            None,
            "content-type;host;x-amz-date",
            "ff11897932ad3f4e8b18135d722051e5ac45fc38421b1da7b9d196a0fe09473a",
        ),
        (
            "post-sts-header-before",
            {},
            b"",
            SUITE_TOKEN,
            "host;x-amz-date;x-amz-security-token",
            "85d96828115b5dc0cfc3bd16ad9e210dd772bbebba041836c64533a82be05ead",
        ),
    ],
)
def test_aws_test_suite_vectors(
    name: str, headers: dict[str, str], body: bytes, token: str | None, signed: str, signature: str
) -> None:
    signer = SigV4Signer(region="us-east-1", service="service", host="example.amazonaws.com")
    credentials = SUITE_KEY._replace(token=token)
    out = signer.sign(dict(headers), body, credentials, now=SUITE_TIME)
    assert out["X-Amz-Date"] == "20150830T123600Z", name
    assert out["Authorization"] == (
        f"AWS4-HMAC-SHA256 Credential={SUITE_SCOPE}, SignedHeaders={signed}, Signature={signature}"
    ), name
    if token:
        assert out["X-Amz-Security-Token"] == token
    else:
        assert "X-Amz-Security-Token" not in out


def test_host_header_is_what_botocore_signs_and_http_client_sends() -> None:
    assert host_header("Example.COM", 443, https=True) == "example.com"
    assert host_header("example.com", 80, https=False) == "example.com"
    assert host_header("127.0.0.1", 8000, https=False) == "127.0.0.1:8000"
    assert host_header("127.0.0.1", 443, https=False) == "127.0.0.1:443"
    assert host_header("::1", 8000, https=False) == "[::1]:8000"
    for url in ("http://127.0.0.1:8000/", "https://dynamodb.eu-west-1.amazonaws.com/"):
        split = urlsplit(url)
        https = split.scheme == "https"
        port = split.port or (443 if https else 80)
        signed_by_botocore = botocore.auth._host_from_url(url)  # type: ignore[attr-defined]
        assert host_header(split.hostname or "", port, https=https) == signed_by_botocore


# ---- byte equality with botocore over fuzzed requests --------------------------------------------


def botocore_signed(
    url: str,
    headers: dict[str, str],
    body: bytes,
    credentials: Credentials,
    region: str,
    service: str,
    now: float,
) -> dict[str, str]:
    """The headers botocore's ``SigV4Auth`` adds to the same ``POST`` at the same time."""
    request = AWSRequest(method="POST", url=url, data=body, headers=headers)
    at = datetime.datetime.fromtimestamp(now, datetime.UTC).replace(tzinfo=None)
    with mock.patch.object(botocore.auth, "get_current_datetime", return_value=at):
        SigV4Auth(ReadOnlyCredentials(*credentials), service, region).add_auth(request)
    return dict(request.headers.items())


_NAME = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=12)
# botocore decides these itself (or treats them specially): the signer is never given them.
_RESERVED = {"authorization", "x-amz-date", "date", "x-amz-security-token", "host"}
_RESERVED |= {"x-amz-content-sha256"}
_HEADER_NAMES = _NAME.filter(lambda n: n.lower() not in _RESERVED) | st.sampled_from(
    ["Content-Type", "X-Amz-Target", "User-Agent", "X-Amzn-Trace-Id", "Expect", "content-type"]
)
# Header values: printable ASCII with spaces and tabs to trim and collapse (no line breaks).
_VALUE_CHARS = string.ascii_letters + string.digits + string.punctuation + " \t"
_HEADER_VALUE = st.text(_VALUE_CHARS, max_size=40)
_SECRET = st.text(string.ascii_letters + string.digits + "/+=äé", min_size=1, max_size=40)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    headers=st.dictionaries(_HEADER_NAMES, _HEADER_VALUE, max_size=6),
    body=st.binary(max_size=300),
    access_key=st.text(string.ascii_uppercase + string.digits, min_size=1, max_size=20),
    secret=_SECRET,
    token=st.none() | st.text(string.ascii_letters + string.digits + "/+= ", max_size=60),
    region=st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2"]) | _NAME,
    service=st.sampled_from(["dynamodb", "sqs", "execute-api"]) | _NAME,
    host=st.sampled_from(["127.0.0.1", "localhost", "dynamodb.eu-west-1.amazonaws.com"]),
    port=st.integers(1, 65535),
    https=st.booleans(),
    now=st.integers(946_684_800, 4_102_444_799),
)
def test_equal_to_botocore_byte_for_byte(
    headers: dict[str, str],
    body: bytes,
    access_key: str,
    secret: str,
    token: str | None,
    region: str,
    service: str,
    host: str,
    port: int,
    https: bool,
    now: int,
) -> None:
    scheme = "https" if https else "http"
    url = f"{scheme}://{host}:{port}/"
    credentials = Credentials(access_key, secret, token)
    signer = SigV4Signer(region=region, service=service, host=host_header(host, port, https=https))
    ours = signer.sign(dict(headers), body, credentials, now=float(now))
    theirs = botocore_signed(url, dict(headers), body, credentials, region, service, float(now))
    assert ours == theirs
    # The day's key, now cached, signs the next request of the day the same way again.
    later = float(now - now % 86400 + 86399)
    again = signer.sign(dict(headers), body, credentials, now=later)
    assert again == botocore_signed(url, dict(headers), body, credentials, region, service, later)


def test_the_signing_key_is_derived_once_per_day_and_secret() -> None:
    signer = SigV4Signer(region="eu-west-1", service="dynamodb", host="h")
    creds = Credentials("AKID", "secret", None)
    day0 = 1_765_000_000.0 - 1_765_000_000.0 % 86400
    with mock.patch.object(sigv4, "_hmac", wraps=sigv4._hmac) as derive:
        for offset in (0, 10, 86399):
            signer.sign({}, b"{}", creds, now=day0 + offset)
        assert derive.call_count == 4  # kDate, kRegion, kService, kSigning: once
        signer.sign({}, b"{}", creds, now=day0 + 86400)  # the next day: a new key
        assert derive.call_count == 8
        signer.sign({}, b"{}", creds._replace(secret_key="rotated"), now=day0 + 86400)
        assert derive.call_count == 12  # new credentials: a new key, never the old one
    assert amz_date(day0 + 86400) == time_stamp(day0 + 86400)


def time_stamp(now: float) -> str:
    return datetime.datetime.fromtimestamp(now, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")


# ---- a server that checks signatures: moto with IAM authentication on -------------------------

# moto authenticates every request after the first N: the N set up the user, its key, its
# policy and the table, unauthenticated.
_SETUP_ACTIONS = 4


@pytest.fixture(scope="module")
def checking_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    server = moto_server(free_port(), tmp_path_factory.mktemp("moto-auth") / "moto.log")
    server.env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(_SETUP_ACTIONS)
    with _http_server(server) as endpoint:
        admin = {
            "endpoint_url": endpoint,
            "region_name": "eu-west-1",
            "aws_access_key_id": "admin",
            "aws_secret_access_key": "admin",
        }
        iam = boto3.client("iam", **admin)  # type: ignore[call-overload]
        iam.create_user(UserName="vwr")
        key = iam.create_access_key(UserName="vwr")["AccessKey"]
        iam.put_user_policy(
            UserName="vwr",
            PolicyName="all",
            PolicyDocument=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
                }
            ),
        )
        boto3.client("dynamodb", **admin).create_table(  # type: ignore[call-overload]
            TableName="signed",
            KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
        yield {
            "endpoint": endpoint,
            "access_key": key["AccessKeyId"],
            "secret": key["SecretAccessKey"],
        }


def signed_lean(server: dict[str, str], secret: str | None = None) -> LeanDynamoDB:
    client = boto3.session.Session().client(
        "dynamodb",
        endpoint_url=server["endpoint"],
        region_name="eu-west-1",
        aws_access_key_id=server["access_key"],
        aws_secret_access_key=secret or server["secret"],
        config=Config(retries={"mode": "standard", "max_attempts": 2}),
    )
    return LeanDynamoDB(client, max_attempts=2, connect_timeout_s=2, read_timeout_s=5)


def raw_post(endpoint: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
    split = urlsplit(endpoint)
    connection = http.client.HTTPConnection(split.hostname or "", split.port, timeout=5)
    try:
        connection.request("POST", "/", body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read()
    finally:
        connection.close()


def test_a_checking_server_accepts_the_lean_clients_signatures(
    checking_server: dict[str, str],
) -> None:
    lean = signed_lean(checking_server)
    try:
        pk = uuid.uuid4().hex
        lean.put_item(TableName="signed", Item={"pk": {"S": pk}, "b": {"B": b"\x00"}})
        got = lean.get_item(TableName="signed", Key={"pk": {"S": pk}}, ConsistentRead=True)
        assert got["Item"]["b"] == {"B": b"\x00"}
        # Not vacuous: the server checks, a wrong secret is refused and not retried.
        wrong = signed_lean(checking_server, secret="not-the-secret")
        with pytest.raises(wrong.exceptions.ClientError) as refused:
            wrong.get_item(TableName="signed", Key={"pk": {"S": pk}})
        # moto answers in XML, so the code is the status, as botocore's client makes it too.
        assert refused.value.response["Error"]["Code"] == "403"
        assert "<Code>SignatureDoesNotMatch</Code>" in refused.value.response["Error"]["Message"]
        assert refused.value.response["ResponseMetadata"]["RetryAttempts"] == 0
        wrong.close()
    finally:
        lean.close()


@pytest.mark.parametrize("tamper", ["body", "signature", "target", "date", "signed-headers"])
def test_a_tampered_request_is_refused(checking_server: dict[str, str], tamper: str) -> None:
    endpoint = checking_server["endpoint"]
    split = urlsplit(endpoint)
    signer = SigV4Signer(
        region="eu-west-1",
        service="dynamodb",
        host=host_header(split.hostname or "", split.port or 80, https=False),
    )
    credentials = Credentials(checking_server["access_key"], checking_server["secret"], None)
    body = json.dumps({"TableName": "signed", "Key": {"pk": {"S": "nobody"}}}).encode()
    headers = signer.sign(
        {"Content-Type": "application/x-amz-json-1.0", "X-Amz-Target": "DynamoDB_20120810.GetItem"},
        body,
        credentials,
    )
    # The untouched request passes: what fails below fails for the tampering alone.
    assert raw_post(endpoint, dict(headers), body)[0] == 200
    if tamper == "body":
        body = body.replace(b"nobody", b"nobodx")
    elif tamper == "signature":
        last = headers["Authorization"][-1]
        headers["Authorization"] = headers["Authorization"][:-1] + ("0" if last != "0" else "1")
    elif tamper == "target":
        headers["X-Amz-Target"] = "DynamoDB_20120810.DeleteItem"
    elif tamper == "date":
        stamp = headers["X-Amz-Date"]
        headers["X-Amz-Date"] = stamp[:-3] + ("00Z" if stamp[-3:] != "00Z" else "01Z")
    else:  # claim the target was not signed: the server recomputes over fewer headers
        headers["Authorization"] = headers["Authorization"].replace(";x-amz-target", "")
    status, answer = raw_post(endpoint, dict(headers), body)
    assert status == 403, (tamper, status, answer)
    assert b"<Code>SignatureDoesNotMatch</Code>" in answer, (tamper, answer)
