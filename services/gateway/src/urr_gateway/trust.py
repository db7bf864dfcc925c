"""Who the gateway trusts in front of it, and which sites may send it cookies.

Pure rules over addresses and header values, with the settings block they read
(``URR_TRUST__*``):

- The client address comes from ``X-Forwarded-For`` only when the TCP peer is a trusted proxy
  (``proxy_cidrs``: the load balancer's subnets, CloudFront's ranges), and then from walking
  the header right to left past every trusted address: the first address that is not a proxy
  of ours is the client. Whoever reaches the gateway directly is the client, whatever they
  write into the header. Never by hop count.
- When ``origin_secrets`` is set, every request must carry one of them in
  ``origin_secret_header`` (CloudFront adds it as an origin custom header): two values are
  accepted so the secret can rotate without refusing anyone.
- Anonymous callers are limited per address; an IPv6 client owns a whole /64, so its bucket
  is the /64.
- ``site_origins`` are the origins whose pages may send state-changing requests with the
  ``access_token`` cookie (the CSRF rule in ``filters.csrf``).
"""

from __future__ import annotations

import functools
import hmac
import ipaddress
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import NoDecode

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: The prefix an IPv6 client is limited by: one home or one mobile connection gets a /64.
IPV6_BUCKET_PREFIX = 64
#: Shortest origin secret accepted: it is a credential, not a label.
MIN_ORIGIN_SECRET_LENGTH = 16
DEFAULT_SITE_ORIGINS = (
    "http://127.0.0.1:8000",
    "http://localhost:8000",
    "http://127.0.0.1:3001",
    "http://localhost:3001",
)


def _split(value: Any) -> Any:
    """A string from the environment (a JSON list, or comma-separated) becomes a list."""
    if isinstance(value, str):
        if value.lstrip().startswith("["):
            try:
                return json.loads(value)
            except ValueError as exc:
                raise ValueError("not a JSON list; or give comma-separated values") from exc
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


def canonical_origin(value: str) -> str:
    """``scheme://host[:port]`` in lower case; ``ValueError`` for anything else."""
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) origin like https://tickets.example.com")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError(f"{value!r} must be an origin only: no path, query or user")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{value!r} has an invalid port") from exc
    default_port = 443 if parts.scheme == "https" else 80
    suffix = f":{port}" if port is not None and port != default_port else ""
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{suffix}"


class TrustSettings(BaseModel):
    #: Networks whose members may write ``X-Forwarded-For`` (comma-separated CIDRs). Empty:
    #: the TCP peer is always the client and every X-Forwarded-* header is ignored.
    proxy_cidrs: Annotated[list[IPNetwork], NoDecode] = Field(default_factory=list)
    #: The header CloudFront adds to every origin request.
    origin_secret_header: str = "X-Origin-Verify"  # noqa: S105 (a header name)
    #: Accepted values of that header (at most two: current and next, while rotating). Empty:
    #: no header is required (local stack).
    origin_secrets: Annotated[list[SecretStr], NoDecode] = Field(default_factory=list)
    #: Origins whose pages may send cookie-authenticated POST/PUT/PATCH/DELETE requests
    #: (compared with ``Origin``, never called: hence not an endpoint for deploy checks).
    site_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(DEFAULT_SITE_ORIGINS), json_schema_extra={"calls": False}
    )
    #: Domain of the ``access_token`` cookie as the auth service sets it (to clear it).
    access_cookie_domain: str | None = None
    #: ``Strict-Transport-Security`` max-age on answers to requests that came over TLS.
    hsts_max_age_s: int = Field(default=31_536_000, ge=0, le=63_072_000)

    @field_validator("proxy_cidrs", mode="before")
    @classmethod
    def _cidrs(cls, value: Any) -> Any:
        parsed = []
        for item in _split(value):
            if isinstance(item, str):
                try:
                    item = ipaddress.ip_network(item, strict=True)
                except ValueError as exc:
                    raise ValueError(
                        f"{item!r} is not a network in CIDR form like 10.0.0.0/16 "
                        "(host bits must be zero)"
                    ) from exc
            parsed.append(item)
        return parsed

    @field_validator("origin_secrets", mode="before")
    @classmethod
    def _secrets(cls, value: Any) -> Any:
        values = _split(value)
        if len(values) > 2:
            raise ValueError("at most two origin secrets (the current one and the next)")
        for item in values:
            secret = item.get_secret_value() if isinstance(item, SecretStr) else str(item)
            if len(secret) < MIN_ORIGIN_SECRET_LENGTH:
                raise ValueError(
                    f"an origin secret needs at least {MIN_ORIGIN_SECRET_LENGTH} characters"
                )
        return values

    @field_validator("origin_secret_header")
    @classmethod
    def _header_name(cls, value: str) -> str:
        if not value or not all(ch.isalnum() or ch == "-" for ch in value):
            raise ValueError("a header name: letters, digits and '-' only")
        return value

    @field_validator("access_cookie_domain")
    @classmethod
    def _cookie_domain(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host = value.strip().lstrip(".").lower()
        labels = host.split(".")
        if not host or not all(
            label and all(ch.isalnum() or ch == "-" for ch in label) for label in labels
        ):
            raise ValueError(f"{value!r} is not a cookie domain like urr.example.com")
        return host

    @field_validator("site_origins", mode="before")
    @classmethod
    def _origins(cls, value: Any) -> Any:
        origins = [canonical_origin(str(item)) for item in _split(value)]
        if not origins:
            raise ValueError("name at least one site origin (e.g. https://tickets.example.com)")
        return origins


@functools.lru_cache(maxsize=4096)
def canonical_ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    # Cached: the same peers (load balancers, keep-alive clients) come back on every request.
    try:
        address = ipaddress.ip_address(value.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)
def canonical_ip_text(value: str) -> str | None:
    """``str(canonical_ip(value))``, cached: formatting an address back to text costs more than
    the lookup, and the same peers come back on every request."""
    address = canonical_ip(value)
    return None if address is None else str(address)


def address_bucket(address: str) -> str:
    """The key anonymous limits count by: the address, or an IPv6 address's /64."""
    parsed = canonical_ip(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        network = ipaddress.IPv6Network((parsed, IPV6_BUCKET_PREFIX), strict=False)
        return network.with_prefixlen
    return address


@dataclass(frozen=True, slots=True)
class ClientAddress:
    #: The client, as far as trusted proxies vouch for it.
    ip: str
    #: The X-Forwarded-For chain for the upstream: client, trusted proxies, TCP peer.
    chain: list[str]
    #: Whether the TCP peer is a trusted proxy (then its X-Forwarded-Proto/Host count too).
    via_trusted_proxy: bool


#: TCP peers whose (untrusted) client address is kept (``ProxyTrust.client``).
_DIRECT_PEERS_MAX = 4096


class ProxyTrust:
    """Decides the client address from the TCP peer and ``X-Forwarded-For``."""

    def __init__(self, networks: Sequence[IPNetwork]) -> None:
        self._networks = tuple(networks)
        self.is_trusted: Callable[[str], bool] = functools.lru_cache(maxsize=4096)(self._trusted)
        #: The answer for a TCP peer that is not a trusted proxy, by its address text: it
        #: depends on nothing else, and keep-alive clients and load balancers come back on
        #: every request. Shared between requests, so never to be mutated (the chain is read
        #: only, joined into X-Forwarded-For). Bounded; oldest entry goes first.
        self._direct: dict[str | None, ClientAddress] = {}
        #: ``client(remote, ...)`` for a TCP peer whose answer is kept, else ``None``: one C
        #: call, without the ``X-Forwarded-For`` lookup its caller would make for ``client``.
        self.known_direct: Callable[[str | None], ClientAddress | None] = self._direct.get

    def _trusted(self, address: str) -> bool:
        parsed = canonical_ip(address)
        return parsed is not None and any(
            parsed.version == network.version and parsed in network for network in self._networks
        )

    def client(self, remote: str | None, forwarded_for: Sequence[str]) -> ClientAddress:
        direct = self._direct.get(remote) if remote is not None else None
        if direct is not None:
            return direct
        peer = canonical_ip_text(remote or "") or "unknown"
        if not self._networks or not self.is_trusted(peer):
            direct = ClientAddress(peer, [peer], via_trusted_proxy=False)
            if remote is not None:
                if len(self._direct) >= _DIRECT_PEERS_MAX:
                    del self._direct[next(iter(self._direct))]
                self._direct[remote] = direct
            return direct
        hops = [part.strip() for value in forwarded_for for part in value.split(",")]
        walked: list[str] = []
        client = peer
        for hop in reversed([hop for hop in hops if hop]):
            parsed = canonical_ip_text(hop)
            if parsed is None:
                break  # garbage written by whoever is to the right of it: stop trusting
            client = parsed
            walked.append(client)
            if not self.is_trusted(client):
                break
        return ClientAddress(client, [*reversed(walked), peer], via_trusted_proxy=True)


def origin_secret_matches(sent: str | None, secrets: Sequence[SecretStr]) -> bool:
    """Constant-time comparison of the header against each accepted secret."""
    if sent is None:
        return False
    given = sent.encode()
    matched = False
    for secret in secrets:
        matched |= hmac.compare_digest(given, secret.get_secret_value().encode())
    return matched
