"""The CSRF rule: a browser's ambient cookie may change state only from our own pages.

A state-changing request (POST, PUT, PATCH, DELETE) authenticated by the ``access_token``
cookie must say where it comes from: an ``Origin`` among the configured site origins, or
``Sec-Fetch-Site: same-origin``. Browsers send ``Origin`` on every cross-origin request and on
every same-origin ``fetch`` POST, so a form on another site, posting with the victim's
cookies, is refused. Bearer-authenticated clients (their credential is never sent by the
browser on its own) are not concerned.
"""

from __future__ import annotations

from collections.abc import Collection

from urr_gateway.trust import canonical_origin

STATE_CHANGING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def csrf_allowed(
    method: str,
    origin: str | None,
    sec_fetch_site: str | None,
    site_origins: Collection[str],
) -> bool:
    """May a cookie-authenticated request with these headers go on?"""
    if method.upper() not in STATE_CHANGING_METHODS:
        return True
    if sec_fetch_site is not None and sec_fetch_site.strip().lower() == "same-origin":
        return True
    if not origin:
        return False
    try:
        return canonical_origin(origin) in site_origins
    except ValueError:  # "null" (sandboxed frames, some redirects) or garbage
        return False
