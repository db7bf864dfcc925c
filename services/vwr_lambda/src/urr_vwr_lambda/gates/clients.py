"""Who is calling: the client address a per-client cap counts (issue 15, 3a).

Behind CloudFront, API Gateway's ``requestContext.identity.sourceIp`` is the address of the
CloudFront edge server, shared by every viewer of that edge: capping it would cap a whole city.
CloudFront names the viewer in ``CloudFront-Viewer-Address`` (``ip:port``; the distribution's
origin request policy forwards it). That header is believed only when the request carried a
valid origin-verify header, i.e. it came through the distribution, which sets the header
itself; anything that reached the API another way (only possible with the origin check off)
is counted by its ``sourceIp``.

IPv6 addresses count by their /64 network: one subscriber gets a whole /64 and could otherwise
take a place from each of its 2**64 addresses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from urr_vwr_lambda.gates.origin import header_value

VIEWER_ADDRESS_HEADER = "CloudFront-Viewer-Address"
#: The key of a caller whose address cannot be read (one shared bucket, never unlimited).
UNKNOWN_CLIENT = "unknown"


def parse_address(raw: str | None, *, with_port: bool) -> str | None:
    """The canonical text of an IP address (``ip:port`` when ``with_port``), or None."""
    if not raw:
        return None
    text = raw.strip()
    if with_port:
        host, sep, port = text.rpartition(":")
        if not sep or not port.isdigit():
            return None
        text = host
    text = text.removeprefix("[").removesuffix("]")
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


def client_key(address: str | None) -> str:
    """The bucket an address counts in: an IPv4 address, or an IPv6 /64 network."""
    if address is None:
        return UNKNOWN_CLIENT
    parsed = ipaddress.ip_address(address)
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        return str(ipaddress.IPv6Network((parsed, 64), strict=False))
    return str(parsed)


def source_ip(event: Mapping[str, Any]) -> str | None:
    """API Gateway's idea of the caller (REST v1 ``identity``, HTTP API v2 ``http``)."""
    context = event.get("requestContext")
    if not isinstance(context, Mapping):
        return None
    for block in ("identity", "http"):
        section = context.get(block)
        if isinstance(section, Mapping) and isinstance(section.get("sourceIp"), str):
            return parse_address(section["sourceIp"], with_port=False)
    return None


def client_address(event: Mapping[str, Any], *, via_distribution: bool) -> str:
    """The key of the client an anonymous assign counts against."""
    if via_distribution:
        viewer = parse_address(
            header_value(event.get("headers"), VIEWER_ADDRESS_HEADER), with_port=True
        )
        if viewer is not None:
            return client_key(viewer)
    return client_key(source_ip(event))
