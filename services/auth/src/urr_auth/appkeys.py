"""Typed application keys for the auth service's state."""

from __future__ import annotations

from aiohttp import web

from urr_auth.access_tokens import AccessTokens
from urr_auth.accounts import Accounts
from urr_auth.metrics import AuthMetrics
from urr_auth.settings import AuthSettings

SETTINGS_KEY = web.AppKey("urr_auth_settings", AuthSettings)
ACCESS_TOKENS_KEY = web.AppKey("urr_auth_access_tokens", AccessTokens)
ACCOUNTS_KEY = web.AppKey("urr_auth_accounts", Accounts)
METRICS_KEY = web.AppKey("urr_auth_metrics", AuthMetrics)
