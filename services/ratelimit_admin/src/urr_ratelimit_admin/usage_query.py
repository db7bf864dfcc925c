"""The filters of ``GET .../usage``: parsed and checked here, before any query runs.

Rows come oldest period first, then by tenant and policy; a page ends with an opaque
``next`` cursor (the last row's sort key), so pages stay stable while new hours arrive.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, Self

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from urr_common.ratelimit_usage import ANONYMOUS_TENANT

#: A tenant id (``rl_tenants``' check) or the anonymous tenant.
TENANT_PATTERN = r"^([a-z0-9][a-z0-9-]{0,62}|" + ANONYMOUS_TENANT + ")$"
POLICY_PATTERN = r"^[^\x00-\x1f]{1,64}$"
MAX_LIMIT = 1000
#: Beyond this a range would read more history than anyone pages through.
MAX_RANGE = timedelta(days=400)


class Cursor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    period_start: datetime
    tenant: str = Field(pattern=TENANT_PATTERN)
    policy: str = Field(pattern=POLICY_PATTERN)

    def encode(self) -> str:
        raw = orjson.dumps([self.period_start.isoformat(), self.tenant, self.policy])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str) -> Cursor:
        if len(text) > 400:
            raise ValueError("not a cursor from this API")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            period, tenant, policy = orjson.loads(raw)
            cursor = cls(period_start=period, tenant=tenant, policy=policy)
        except (binascii.Error, orjson.JSONDecodeError, ValueError, TypeError) as exc:
            raise ValueError("not a cursor from this API") from exc
        if cursor.period_start.tzinfo is None:
            raise ValueError("not a cursor from this API")
        return cursor


class UsageQuery(BaseModel):
    """``tenant``, ``policy``, ``from`` (inclusive), ``to`` (exclusive), ``limit``, ``cursor``."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    tenant: str | None = Field(default=None, pattern=TENANT_PATTERN)
    policy: str | None = Field(default=None, pattern=POLICY_PATTERN)
    start: datetime | None = Field(default=None, alias="from")
    end: datetime | None = Field(default=None, alias="to")
    limit: int = Field(default=100, ge=1, le=MAX_LIMIT)
    cursor: Cursor | None = None

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("give a time zone (e.g. 2026-12-01T00:00:00Z)")
        return value

    @field_validator("cursor", mode="before")
    @classmethod
    def _decoded(cls, value: Any) -> Any:
        return Cursor.decode(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.start is not None and self.end is not None:
            if self.start >= self.end:
                raise ValueError("from must be before to")
            if self.end - self.start > MAX_RANGE:
                raise ValueError(f"a range spans at most {MAX_RANGE.days} days")
        return self


def parse_usage_query(params: Mapping[str, str], keys: list[str]) -> UsageQuery:
    """The query of a request (``params``; ``keys`` with repeats, which are refused).

    Raises ``ValidationError`` (including for a repeated or unknown parameter).
    """
    repeated = sorted({key for key in keys if keys.count(key) > 1})
    if repeated:
        raise ValidationError.from_exception_data(
            "UsageQuery",
            [
                {
                    "type": "value_error",
                    "loc": (key,),
                    "input": None,
                    "ctx": {"error": ValueError("give this parameter once")},
                }
                for key in repeated
            ],
        )
    return UsageQuery.model_validate(dict(params))
