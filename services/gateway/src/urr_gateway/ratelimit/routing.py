"""Which rate-limit category a request path belongs to: a longest-prefix table.

Prefixes match whole path segments only: ``/api/v1/auth`` covers ``/api/v1/auth`` and
``/api/v1/auth/login`` but not ``/api/v1/authx``. Paths are matched as given; normalising
``..``, encoded slashes and double encoding is the proxy's job, done before any filter runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

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
    #: ``exempt`` and ``rules`` compiled into one match, once: see ``_compile``.
    _lookup: _Lookup = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "_lookup", _compile(self.rules, self.default_category, self.exempt)
        )

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
        """Same answer as the module's ``category_for``, in one C regex match per request.

        The scan below calls ``_under`` once per prefix (six times for a path under no
        rule with the shipped table), each building ``prefix + "/"``; this runs on every
        proxied request and every check API call.
        """
        pattern, answers, fallback = self._lookup
        match = pattern(path)
        return fallback if match is None else answers[match.lastindex]  # type: ignore[index]


#: (bound ``match`` of the compiled table, answer by group number, answer when none matches).
_Lookup = tuple[Callable[[str], "re.Match[str] | None"], tuple[str | None, ...], str | None]


def _compile(
    rules: tuple[tuple[str, str], ...], default_category: str, exempt: tuple[str, ...]
) -> _Lookup:
    """The scan of ``category_for`` as one anchored alternation, one group per prefix.

    The alternatives keep the scan's order (exempt prefixes, then the rules as given), and
    the regex engine, like the scan, answers with the first that matches: it backtracks to
    the next alternative when the segment boundary ``(?:/|\\Z)`` after one fails (``\\Z``, not
    ``$``, which also matches before a final newline). The empty prefix matches every path,
    even one not starting with ``/``, so nothing after it is ever reached: it becomes the
    answer when no earlier alternative matches.
    """
    ordered: list[tuple[str, str | None]] = []
    fallback: str | None = default_category
    for prefix, answer in [*((e, None) for e in exempt), *rules]:
        if not prefix:
            fallback = answer
            break
        ordered.append((prefix, answer))
    answers: tuple[str | None, ...] = (None, *(answer for _, answer in ordered))
    if not ordered:
        return _no_match, answers, fallback
    alternatives = "|".join(f"({re.escape(prefix)})" for prefix, _ in ordered)
    return re.compile(f"(?:{alternatives})(?:/|\\Z)").match, answers, fallback


def _no_match(_path: str) -> None:
    return None


def category_for(
    path: str,
    rules: tuple[tuple[str, str], ...],
    default_category: str,
    exempt: tuple[str, ...] = (),
) -> str | None:
    """The category of ``path`` under ``rules`` (longest prefix first), or ``None`` if exempt.

    The reference scan; ``CategoryRouter.category_for`` answers the same from a compiled table.
    """
    for prefix in exempt:
        if _under(path, prefix):
            return None
    for prefix, category in rules:
        if _under(path, prefix):
            return category
    return default_category
