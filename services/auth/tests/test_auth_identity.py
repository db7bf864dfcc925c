"""The auth service names users only from their own tokens; identity headers buy nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from urr_auth.app import AUDIENCE
from urr_auth.settings import AuthSettings
from urr_auth.testing import AuthApi
from urr_common.identity import ASSERTION_HEADER
from urr_common.identity_testing import identity_settings, mint
from urr_common.settings import SettingsError, load_settings

pytestmark = pytest.mark.integration


async def test_x_user_headers_and_foreign_assertions_name_nobody(
    start_client: Callable[[AuthSettings], Awaitable[Any]],
    make_settings: Callable[..., AuthSettings],
) -> None:
    client = await start_client(make_settings(identity=identity_settings()))
    api = AuthApi(client)
    await api.register(display_name="Ada")
    liar = {"X-User-Id": "victim", "X-User-Role": "admin", "X-User-Email": "a@b.test"}
    refused = await client.get("/api/v1/auth/me", headers=liar)
    assert refused.status == 401
    for_the_queue = mint("victim", "admin", audience="queue", method="GET", path="/api/v1/auth/me")
    refused = await client.get("/api/v1/auth/me", headers={ASSERTION_HEADER: for_the_queue})
    assert refused.status == 401
    assert (await refused.json())["code"] == "invalid_identity"
    # The gateway's own assertion rides along with the user's token and changes nothing.
    token = (await api.login())["access_token"]
    mine = mint("someone", "user", audience=AUDIENCE, method="GET", path="/api/v1/auth/me")
    headers = {"Authorization": f"Bearer {token}", ASSERTION_HEADER: mine}
    answer = await client.get("/api/v1/auth/me", headers=headers)
    assert answer.status == 200
    assert (await answer.json())["display_name"] == "Ada"


def test_identity_settings_are_validated() -> None:
    with pytest.raises(SettingsError, match="URR_IDENTITY__MAX_LIFETIME_S"):
        load_settings(AuthSettings, identity={"max_lifetime_s": 0})
