"""Telling the Tier-1 room that a place is spent, so ``/vwr/check`` stops handing out its pass.

Tier 2 is where a place is spent (``visit.lua``, ``leave.lua``, ``tick.lua``: atomically, with
the end of the stay) and where the rule is enforced: a spent place's pass is refused at the
door whatever the Tier-1 table says. The scripts also put each spent place in the event's
outbox (``{e}:unmarked``). This loop drains the outbox into the Tier-1 ``positions`` table: a
conditional ``UpdateItem`` sets ``spentAt`` on the place's row, and only then does the place
leave the outbox. A DynamoDB outage, a crash or a slow table leave the places in the outbox
for the next round (at least once; a second mark is a no-op); meanwhile ``/vwr/check`` may
still hand out the pass, and Tier 2 still refuses it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit
from urllib.request import getproxies, proxy_bypass

import aiohttp
import orjson
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from urr_common.clients import aws_client_kwargs
from urr_common.logs import get_logger
from urr_common.settings import AwsSettings
from urr_common.sigv4 import SigV4Signer, host_header
from urr_queue.metrics import QueueMetrics
from urr_queue.settings import Tier1PlacesSettings
from urr_queue.store import QueueStore
from urr_queue.tier1 import parse_place_key

_LOG = get_logger(__name__)


#: A round waits this long at most for one mark (a mark not made is retried next round).
_CLIENT_CONFIG = Config(
    connect_timeout=2, read_timeout=5, retries={"mode": "standard", "max_attempts": 2}
)
#: The same bounds for the lean path (which does not retry: the outbox does).
_LEAN_TIMEOUT = aiohttp.ClientTimeout(total=7, sock_connect=2, sock_read=5)


@asynccontextmanager
async def open_dynamodb(aws: AwsSettings) -> AsyncIterator[Any]:
    """The aioboto3 DynamoDB client of the marker, short on retries: the outbox retries."""
    import aioboto3

    async with aioboto3.Session().client(
        "dynamodb", config=_CLIENT_CONFIG, **aws_client_kwargs(aws, "dynamodb")
    ) as client:
        yield client


class SpentPlaceTable:
    """The one write Tier 2 makes to the Tier-1 ``positions`` table.

    ``lean`` (the default): the conditional ``UpdateItem`` is posted as DynamoDB's JSON,
    signed by ``urr_common.sigv4``, on a kept-alive aiohttp connection; the aioboto3 client
    given only lends its endpoint, region and credential chain. In a flash crowd each admitted
    arrival is one mark, and botocore's serialiser, parser, event hooks and signer cost the
    queue about 10 % of its CPU (issue 22 item 3, ``docs/performance.md``). ``lean=False``
    sends it through the aioboto3 client (``URR_TIER1_PLACES__CLIENT=botocore``). Either way
    no retry here: a mark not made stays in the outbox for the next round. Close it
    (``close`` or ``async with``) to close the lean path's connections.
    """

    def __init__(self, dynamodb: Any, table: str, *, lean: bool = True) -> None:
        self._db = dynamodb
        self.table = table
        self._lean = _LeanUpdate(dynamodb) if lean else None

    async def __aenter__(self) -> SpentPlaceTable:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._lean is not None:
            await self._lean.close()

    async def mark_spent(
        self, event_id: str, request_id: str, position: int, *, spent_at_s: int
    ) -> bool:
        """Set ``spentAt`` on the row of this place; False when there is nothing to mark.

        The condition names the number too (the place's number, or under the random method
        the admission sequence its pass was signed with): a row written again for the same
        request id (a new place after the old one expired, or after a reset) is another place
        and stays as it is. A row already marked keeps its first time.
        """
        params = {
            "TableName": self.table,
            "Key": {"eventId": {"S": event_id}, "requestId": {"S": request_id}},
            "UpdateExpression": "SET spentAt = :at",
            "ConditionExpression": (
                "attribute_exists(requestId) AND (#pos = :pos OR grantSeq = :pos) "
                "AND attribute_not_exists(spentAt)"
            ),
            "ExpressionAttributeNames": {"#pos": "position"},
            "ExpressionAttributeValues": {
                ":at": {"N": str(spent_at_s)},
                ":pos": {"N": str(position)},
            },
        }
        try:
            if self._lean is not None:
                await self._lean.update_item(params)
            else:
                await self._db.update_item(**params)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") == "ConditionalCheckFailedException":
                return False
            raise
        return True


class _LeanUpdate:
    """``UpdateItem`` as signed JSON over aiohttp, errors raised as botocore's ``ClientError``."""

    def __init__(self, dynamodb: Any) -> None:
        meta = dynamodb.meta
        endpoint = urlsplit(meta.endpoint_url)
        if endpoint.scheme not in ("http", "https") or not endpoint.hostname:
            raise ValueError(f"unusable DynamoDB endpoint {meta.endpoint_url!r}")
        https = endpoint.scheme == "https"
        port = endpoint.port or (443 if https else 80)
        self._host = host_header(endpoint.hostname, port, https=https)
        self._url = f"{endpoint.scheme}://{endpoint.netloc}/"
        self._signer = SigV4Signer(region=meta.region_name, service="dynamodb", host=self._host)
        # The client's own credential chain (refreshable credentials refresh themselves).
        self._credentials = dynamodb._request_signer._credentials
        self._session: aiohttp.ClientSession | None = None
        # The proxy botocore would take from the environment, looked up once: aiohttp's
        # trust_env looks it up (and reads ~/.netrc) on a thread for every request, which
        # cost more than the mark itself.
        proxy = meta.config.proxies or getproxies()
        chosen = proxy.get(endpoint.scheme) if proxy else None
        self._proxy = None if chosen is None or proxy_bypass(endpoint.hostname) else chosen

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def update_item(self, params: dict[str, Any]) -> None:
        if self._credentials is None:
            raise NoCredentialsError()
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=_LEAN_TIMEOUT, cookie_jar=aiohttp.DummyCookieJar()
            )
        body = orjson.dumps(params)
        headers = {
            "Host": self._host,
            "Content-Type": "application/x-amz-json-1.0",
            "X-Amz-Target": "DynamoDB_20120810.UpdateItem",
        }
        self._signer.sign(headers, body, await self._credentials.get_frozen_credentials())
        async with self._session.post(
            self._url, data=body, headers=headers, proxy=self._proxy
        ) as answer:
            payload = await answer.read()
            status = answer.status
            answered = answer.headers
        if status == 200:
            return
        headers = {name.lower(): value for name, value in answered.items()}
        try:
            error = orjson.loads(payload)
        except orjson.JSONDecodeError:
            error = {}
        if not isinstance(error, dict):
            error = {}
        code = str(error.get("__type", "")).rpartition("#")[2] or str(status)
        message = str(error.get("message") or error.get("Message") or "")
        raise ClientError(
            {
                "Error": {"Code": code, "Message": message},
                "ResponseMetadata": {
                    "RequestId": headers.get("x-amzn-requestid", ""),
                    "HostId": "",
                    "HTTPStatusCode": status,
                    "HTTPHeaders": headers,
                    "RetryAttempts": 0,
                },
            },
            "UpdateItem",
        )


class SpentPlaceMarker:
    """Drains every event's outbox of spent places into the Tier-1 table, round after round."""

    def __init__(
        self,
        store: QueueStore,
        table: SpentPlaceTable,
        metrics: QueueMetrics,
        settings: Tier1PlacesSettings,
    ) -> None:
        self.store = store
        self.table = table
        self.metrics = metrics
        self.settings = settings
        self._failing = False

    async def run_forever(self) -> None:
        while True:
            started = time.monotonic()
            try:
                await self.mark_all()
            except Exception as exc:  # Redis down, a bug: log, wait, go on
                _LOG.warning("tier1_marks_round_failed", error=f"{type(exc).__name__}: {exc}")
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.settings.interval_s - elapsed))

    async def mark_all(self) -> int:
        """One round over every event; how many places left the outboxes."""
        done = 0
        for event_id in await self.store.event_ids():
            done += await self.mark_event(event_id)
        return done

    async def mark_event(self, event_id: str) -> int:
        pending = await self.store.unmarked_places(event_id, self.settings.batch_size)
        if not pending:
            return 0
        outcomes = await asyncio.gather(
            *(self._mark(event_id, place, spent_ms) for place, spent_ms in pending)
        )
        settled = [place for (place, _), ok in zip(pending, outcomes, strict=True) if ok]
        await self.store.places_marked(event_id, settled)
        failed = len(pending) - len(settled)
        if failed and not self._failing:
            _LOG.warning("tier1_marks_failing", event_id=event_id, failed=failed)
        elif not failed and self._failing:
            _LOG.info("tier1_marks_recovered", event_id=event_id)
        self._failing = failed > 0
        return len(settled)

    async def _mark(self, event_id: str, place: str, spent_ms: int) -> bool:
        """True when the place may leave the outbox (marked, or nothing to mark)."""
        parsed = parse_place_key(place)
        if parsed is None:
            self.metrics.tier1_marks.labels("gone").inc()
            return True
        request_id, position = parsed
        try:
            marked = await self.table.mark_spent(
                event_id, request_id, position, spent_at_s=spent_ms // 1000
            )
        except (ClientError, BotoCoreError, OSError, aiohttp.ClientError, TimeoutError) as exc:
            self.metrics.tier1_marks.labels("failed").inc()
            _LOG.debug("tier1_mark_failed", event_id=event_id, error=str(exc))
            return False
        self.metrics.tier1_marks.labels("marked" if marked else "gone").inc()
        return True
