"""Reading and writing JSON bodies, with every way a body can be wrong mapped to a problem."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from urr_common.problems import BadRequest, PayloadTooLarge, Unprocessable, UnsupportedMediaType

ModelT = TypeVar("ModelT", bound=BaseModel)


def json_response(
    payload: Any, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """A JSON response serialised with orjson (pydantic models are dumped in JSON mode)."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump(mode="json")
    return web.Response(
        status=status,
        body=orjson.dumps(payload),
        content_type="application/json",
        headers=headers,
    )


async def read_json(request: web.Request, model: type[ModelT]) -> ModelT:
    """Parse the body as ``model``; 415, 413, 400 or 422 problems when it is not one."""
    if request.content_type != "application/json":
        raise UnsupportedMediaType(
            "send the body as application/json", code="unsupported_media_type"
        )
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise PayloadTooLarge(
            f"the body is larger than {request.app._client_max_size} bytes",
            code="payload_too_large",
        ) from exc
    return validated(model, json_object(raw))


def json_object(raw: bytes) -> dict[str, Any]:
    """``raw`` parsed as a JSON object; a 400 ``malformed_json`` problem when it is not one."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", code="malformed_json") from exc
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return data


def validated(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """``data`` as ``model``; a 422 problem naming the invalid fields when it is not one."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise Unprocessable(
            "some fields are missing or invalid",
            code="validation_failed",
            errors=validation_errors(exc),
        ) from exc


def validation_errors(exc: ValidationError) -> list[dict[str, str]]:
    """Field errors for a problem body, without echoing the submitted values back."""
    return [
        {"field": ".".join(str(part) for part in error["loc"]) or "(body)", "message": error["msg"]}
        for error in exc.errors(include_url=False, include_input=False)
    ]
