"""What a process calls, read from its settings model rather than from a hand-kept list.

A settings object is walked field by field; every URL (``http://``, ``redis://``,
``postgresql://``, ``s3://`` ...) and every ``host:port[,host:port]`` string is an endpoint the
process connects to. Listener blocks (separate ``host`` and ``port`` fields) are not URLs and
are therefore never mistaken for calls, and a field marked ``json_schema_extra={"calls":
False}`` (URLs the process compares against, like the gateway's site origins) is skipped.
An ``AwsSettings`` block without ``endpoint_url`` means
the AWS APIs at their default endpoints.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from pydantic import BaseModel, SecretStr
from pydantic_settings import BaseSettings

from urr_common.settings import ENV_PREFIX, AwsSettings, load_settings
from urr_deploycheck.services import AWS_API_HOST

#: Default port of each URL scheme a service may be configured with.
SCHEME_PORTS = {
    "http": 80,
    "https": 443,
    "redis": 6379,
    "rediss": 6379,
    "postgresql": 5432,
    "postgres": 5432,
}
#: Schemes that mean "an AWS API" (the bucket name is not a host).
AWS_SCHEMES = frozenset({"s3"})
_HOST_PORT_LIST = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}(,[A-Za-z0-9.\-]+:\d{1,5})*$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})


@dataclass(frozen=True, order=True)
class Endpoint:
    """One address a process connects to, and the settings field it came from."""

    host: str
    port: int
    field: str

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS


class SettingsImportError(LookupError):
    """A settings class named in the table cannot be imported."""


def import_settings_class(
    path: str, extra_classes: Mapping[str, type[BaseSettings]] | None = None
) -> type[BaseSettings]:
    """``module:Class`` -> the class.

    ``extra_classes`` answer only for modules that are not installed: the made-up deployments
    of this package's own tests. The real services are always imported (an installed module
    wins), and the checks of the repository's files pass none, so a missing service fails.
    """
    module_name, _, class_name = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if extra_classes and path in extra_classes:
            return extra_classes[path]
        raise SettingsImportError(f"{path}: module {module_name} is not installed") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, BaseSettings)):
        raise SettingsImportError(f"{path}: no settings class {class_name} in {module_name}")
    return cls


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run with exactly ``env`` as the ``URR_*`` variables (others are kept), then restore."""
    saved = {key: value for key, value in os.environ.items() if key.startswith(ENV_PREFIX)}
    for key in saved:
        del os.environ[key]
    os.environ.update({key: value for key, value in env.items() if key.startswith(ENV_PREFIX)})
    try:
        yield
    finally:
        for key in [key for key in os.environ if key.startswith(ENV_PREFIX)]:
            del os.environ[key]
        os.environ.update(saved)


def settings_from_env(cls: type[BaseSettings], env: Mapping[str, str]) -> BaseSettings:
    """Build ``cls`` the way the process will: from these variables only."""
    with environment(env):
        return load_settings(cls)


def endpoints(settings: BaseModel) -> list[Endpoint]:
    """Every endpoint named anywhere in ``settings``, sorted, without duplicates."""
    found: set[Endpoint] = set()
    _walk(settings, (), found)
    return sorted(found)


def _walk(model: BaseModel, path: tuple[str, ...], found: set[Endpoint]) -> None:
    if isinstance(model, AwsSettings) and model.endpoint_url is None:
        found.add(Endpoint(AWS_API_HOST, 443, ".".join((*path, "endpoint_url"))))
    for name, info in type(model).model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and extra.get("calls") is False:
            continue
        _value(getattr(model, name), (*path, name), found)


def _value(value: object, path: tuple[str, ...], found: set[Endpoint]) -> None:
    if isinstance(value, BaseModel):
        _walk(value, path, found)
    elif isinstance(value, SecretStr):
        _value(value.get_secret_value(), path, found)
    elif isinstance(value, str):
        found.update(parse_address(value, ".".join(path)))
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            _value(item, path, found)
    elif isinstance(value, dict):
        for key, item in value.items():
            _value(item, (*path, str(key)), found)


def parse_address(value: str, field: str = "") -> list[Endpoint]:
    """Endpoints named by one string value; none when it is not an address."""
    text = value.strip()
    if "://" in text:
        parts = urlsplit(text)
        scheme = parts.scheme.lower()
        if scheme in AWS_SCHEMES:
            return [Endpoint(AWS_API_HOST, 443, field)]
        if scheme not in SCHEME_PORTS or not parts.hostname:
            return []
        return [Endpoint(parts.hostname, parts.port or SCHEME_PORTS[scheme], field)]
    if _HOST_PORT_LIST.fullmatch(text):
        result = []
        for item in text.split(","):
            host, _, port = item.rpartition(":")
            result.append(Endpoint(host, int(port), field))
        return result
    return []
