"""The chain is declared once and refuses a filter in a slot that is not its own."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.typedefs import Handler

from urr_gateway.chain import FILTER_ORDER, ChainError, build_chain, chain_middlewares
from urr_gateway.filters.base import GatewayFilter
from urr_gateway.trust import TrustSettings


def _filter(name: str, order: int) -> GatewayFilter:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    return GatewayFilter(name=name, order=order, middleware=middleware)


def test_the_declared_order():
    assert FILTER_ORDER == (
        ("cookie_auth", -2),
        ("jwt_auth", -1),
        ("rate_limit", 0),
        ("auth_gate", 1),
        ("entry_token", 2),
    )


def test_chain_with_and_without_the_rate_limiter():
    filters = {name: _filter(name, order) for name, order in FILTER_ORDER}
    full = build_chain(**filters)
    assert [f.name for f in full] == [name for name, _ in FILTER_ORDER]
    without = build_chain(
        cookie_auth=filters["cookie_auth"],
        jwt_auth=filters["jwt_auth"],
        rate_limit=None,
        auth_gate=filters["auth_gate"],
        entry_token=filters["entry_token"],
    )
    assert [f.name for f in without] == ["cookie_auth", "jwt_auth", "auth_gate", "entry_token"]
    middlewares = chain_middlewares(full, trust=TrustSettings())
    assert len(middlewares) == 6  # ingress first, then the five filters
    assert middlewares[1:] == [f.middleware for f in full]


def test_a_filter_in_the_wrong_slot_is_refused():
    filters = {name: _filter(name, order) for name, order in FILTER_ORDER}
    with pytest.raises(ChainError):
        build_chain(**{**filters, "rate_limit": _filter("rate_limit", 5)})


def test_cookies_are_parsed_once_per_header_and_the_cache_is_bounded(monkeypatch):
    from aiohttp.test_utils import make_mocked_request

    from urr_gateway import context

    monkeypatch.setattr(context, "_COOKIES", {})
    monkeypatch.setattr(context, "_COOKIES_MAX_ENTRIES", 3)
    header = 'a=1; access_token=x.y.z; q="quoted"'
    first = make_mocked_request("GET", "/", headers={"Cookie": header})
    second = make_mocked_request("GET", "/", headers={"Cookie": header})
    parsed = context.request_cookies(first)
    assert dict(parsed) == dict(first.cookies)
    assert parsed["access_token"] == "x.y.z"
    assert context.request_cookies(second) is parsed  # the second request did not parse
    assert context.request_cookies(make_mocked_request("GET", "/")) == {}
    for n in range(5):
        context.request_cookies(make_mocked_request("GET", "/", headers={"Cookie": f"n={n}"}))
    assert len(context._COOKIES) == 3
    assert header not in context._COOKIES  # the oldest went first
    huge = "big=" + "x" * 5000
    assert (
        context.request_cookies(make_mocked_request("GET", "/", headers={"Cookie": huge}))["big"]
        == "x" * 5000
    )
    assert huge not in context._COOKIES
