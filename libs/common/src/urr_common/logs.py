"""Structured logs: one JSON object per line, carrying the request id of the request at hand.

``configure_logging`` is called once by a service's entry point. The request middleware binds
``request_id`` (and later ``user_id``) into structlog's context variables, so every line logged
while that request runs carries them, including lines from the standard ``logging`` module
(aiohttp's access log, asyncpg, aiokafka) which are routed through the same renderer.
"""

from __future__ import annotations

import logging
import sys
from contextvars import ContextVar
from typing import Any

import orjson
import structlog

from urr_common.settings import LogSettings


def _orjson_dumps(obj: Any, default: Any = None) -> str:
    return orjson.dumps(obj, default=default).decode()


#: The fields of the request at hand, set in one step per request by a service that starts
#: its request context lazily (``start_request_context``); read only when a line is logged.
_REQUEST_FIELDS: ContextVar[dict[str, Any] | None] = ContextVar("urr_request_fields", default=None)


def _merge_request_fields(
    _: Any, __: str, event_dict: structlog.typing.EventDict
) -> structlog.typing.EventDict:
    fields = _REQUEST_FIELDS.get()
    if fields:
        for name, value in fields.items():
            event_dict.setdefault(name, value)
    return event_dict


def _shared_processors() -> list[structlog.typing.Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        _merge_request_fields,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
    ]


def configure_logging(settings: LogSettings, *, service: str, stream: Any = None) -> None:
    """Route structlog and the standard library through one renderer on ``stream``."""
    renderer: structlog.typing.Processor
    if settings.format == "json":
        renderer = structlog.processors.JSONRenderer(serializer=_orjson_dumps)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)

    structlog.configure(
        processors=[
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=_shared_processors(),
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            _add_service(service),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)


def _add_service(service: str) -> structlog.typing.Processor:
    def add(_: Any, __: str, event_dict: structlog.typing.EventDict) -> structlog.typing.EventDict:
        event_dict.setdefault("service", service)
        return event_dict

    return add


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    """A structlog logger named like a standard one (``get_logger(__name__)``)."""
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger


def bind_request_context(**values: Any) -> None:
    """Attach values (``request_id``, ``user_id``) to every line logged in this task."""
    fields = _REQUEST_FIELDS.get()
    if fields is not None:
        fields.update(values)
        return
    structlog.contextvars.bind_contextvars(**values)


def bind_request_value(name: str, value: Any) -> None:
    """``bind_request_context(name=value)`` without building a keyword dict (once a request
    on the gateway's path: the user id)."""
    fields = _REQUEST_FIELDS.get()
    if fields is not None:
        fields[name] = value
        return
    structlog.contextvars.bind_contextvars(**{name: value})


def start_request_context(request_id: str) -> None:
    """A new request's log context in one ``ContextVar.set``, instead of clearing and binding
    structlog's context variables (several ``ContextVar`` sets and a dict copy per request):
    the fields are merged into a line only when one is logged. ``bind_request_context`` adds
    to it from then on in this task."""
    _REQUEST_FIELDS.set({"request_id": request_id})


def clear_request_context() -> None:
    structlog.contextvars.clear_contextvars()
