"""Which rate-limit category a request path belongs to: a longest-prefix table.

Prefixes match whole path segments only: ``/api/v1/auth`` covers ``/api/v1/auth`` and
``/api/v1/auth/login`` but not ``/api/v1/authx``. Paths are matched as given; normalising
``..``, encoded slashes and double encoding is the proxy's job, done before any filter runs.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from urr_gateway.ratelimit.config import RateLimitSettings


def _segment_prefix(prefix: str) -> str:
    """``/api/v1/auth/*``, ``/api/v1/auth/`` and ``/api/v1/auth`` all mean one prefix."""
    stripped = prefix.removesuffix("*").strip("/")
    return "/" + stripped if stripped else ""


def _under(path: str, prefix: str) -> bool:
    """``path`` is ``prefix`` itself or lies below it, on a segment boundary."""
    if not prefix:
        return True
    return path == prefix or path.startswith(prefix + "/")


@dataclass(frozen=True)
class CategoryRouter:
    """Path -> category; ``None`` for exempt paths (health probes, metrics scrapes)."""

    #: (prefix, category), longest prefix first.
    rules: tuple[tuple[str, str], ...]
    default_category: str
    exempt: tuple[str, ...] = ()

    @classmethod
    def build(
        cls,
        rules: Iterable[tuple[str, str]],
        default_category: str,
        exempt: Iterable[str] = (),
    ) -> CategoryRouter:
        normalised = {_segment_prefix(prefix): category for prefix, category in rules}
        ordered = sorted(normalised.items(), key=lambda item: len(item[0]), reverse=True)
        return cls(tuple(ordered), default_category, tuple(_segment_prefix(p) for p in exempt))

    @classmethod
    def from_settings(cls, settings: RateLimitSettings) -> CategoryRouter:
        return cls.build(
            ((rule.prefix, rule.category) for rule in settings.routes),
            settings.default_category,
            settings.exempt_prefixes,
        )

    def category_for(self, path: str) -> str | None:
        return category_for(path, self.rules, self.default_category, self.exempt)


def category_for(
    path: str,
    rules: tuple[tuple[str, str], ...],
    default_category: str,
    exempt: tuple[str, ...] = (),
) -> str | None:
    """The category of ``path`` under ``rules`` (longest prefix first), or ``None`` if exempt."""
    for prefix in exempt:
        if _under(path, prefix):
            return None
    for prefix, category in rules:
        if _under(path, prefix):
            return category
    return default_category
