"""The operator's waiting-page settings for one event, and the public document built from them.

``PUT /vwr/admin/events/{id}/page`` takes::

    {"name": "Spring concert", "logo": "https://cdn.example/logo.png" | "/img/logo.png",
     "accent": "#rrggbb", "headline": "text" | {"en": "...", "ko": "..."},
     "message": "text" | {"en": "...", "ko": "..."}}

Every field is optional; a text given as a plain string is used for both languages. The
document the waiting page reads (``/vwr/events/{id}.json``, short-lived in caches) carries the
same fields plus ``accentText``: the accent darkened until white text on it passes WCAG AA
(4.5:1), so an operator's pale brand colour never makes the page unreadable. Pure functions:
the admin route validates and stores, the publisher writes the bytes.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from urr_vwr_lambda.problem import VwrProblem
from urr_vwr_lambda.store import iso_of_ms

DOCUMENT_VERSION = 1
LANGUAGES = ("en", "ko")
MAX_NAME = 80
MAX_HEADLINE = 120
MAX_MESSAGE = 600
MAX_LOGO = 512
#: WCAG 2.x AA for normal text.
AA_CONTRAST = 4.5
#: Cache lifetime of the event document: an operator's change shows within a minute.
DOCUMENT_MAX_AGE_S = 30
DOCUMENT_CACHE_CONTROL = f"public, max-age={DOCUMENT_MAX_AGE_S}, stale-while-revalidate=30"

_COLOUR = re.compile(r"^#[0-9a-fA-F]{6}$")
# Control characters (other than none) never belong in a one-line or paragraph text.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_HTTPS_URL = re.compile(r"^https://[A-Za-z0-9.-]+(:[0-9]{1,5})?/[^\s\"'<>\\]*$")
_SITE_PATH = re.compile(r"^/[^/\\\s\"'<>][^\s\"'<>\\]*$")


def _invalid(detail: str) -> VwrProblem:
    return VwrProblem(422, "validation_failed", detail)


@dataclass(frozen=True)
class PageSettings:
    name: str | None = None
    logo: str | None = None
    accent: str | None = None
    headline: dict[str, str] = field(default_factory=dict)
    message: dict[str, str] = field(default_factory=dict)

    def to_stored(self) -> dict[str, Any]:
        stored: dict[str, Any] = {}
        for key in ("name", "logo", "accent"):
            value = getattr(self, key)
            if value is not None:
                stored[key] = value
        if self.headline:
            stored["headline"] = dict(self.headline)
        if self.message:
            stored["message"] = dict(self.message)
        return stored

    @classmethod
    def from_stored(cls, raw: str | None) -> PageSettings:
        """What :meth:`to_stored` wrote (JSON); anything unreadable counts as no settings."""
        if not raw:
            return cls()
        try:
            return parse_page_settings(json.loads(raw))
        except (ValueError, VwrProblem):
            return cls()


def _text(value: Any, name: str, limit: int, *, multiline: bool) -> str:
    if not isinstance(value, str):
        raise _invalid(f"{name} must be a string")
    text = value.strip()
    if not text or len(text) > limit:
        raise _invalid(f"{name} must be 1-{limit} characters")
    if _CONTROL.search(text) or (not multiline and "\n" in text):
        raise _invalid(f"{name} must not contain control characters")
    return text


def _per_language(value: Any, name: str, limit: int) -> dict[str, str]:
    if value is None:
        return {}
    if isinstance(value, str):
        text = _text(value, name, limit, multiline=True)
        return dict.fromkeys(LANGUAGES, text)
    if not isinstance(value, dict) or not value:
        raise _invalid(f"{name} must be a string or an object with 'en' and/or 'ko'")
    unknown = sorted(set(value) - set(LANGUAGES))
    if unknown:
        raise _invalid(f"{name} has unknown languages {unknown}; use 'en' and 'ko'")
    return {
        lang: _text(text, f"{name}.{lang}", limit, multiline=True) for lang, text in value.items()
    }


def _logo(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_LOGO:
        raise _invalid(f"logo must be an https URL or a site path of at most {MAX_LOGO} characters")
    if not (_HTTPS_URL.fullmatch(value) or _SITE_PATH.fullmatch(value)):
        raise _invalid("logo must be an https:// URL or a path on this site starting with '/'")
    return value


def parse_page_settings(body: Any) -> PageSettings:
    """The validated settings of a request body (422 problem on anything else)."""
    if not isinstance(body, dict):
        raise _invalid("the body must be a JSON object")
    unknown = sorted(set(body) - {"name", "logo", "accent", "headline", "message"})
    if unknown:
        raise _invalid(f"unknown fields {unknown}")
    accent = body.get("accent")
    if accent is not None and (not isinstance(accent, str) or not _COLOUR.fullmatch(accent)):
        raise _invalid("accent must be a colour written #rrggbb")
    name = body.get("name")
    return PageSettings(
        name=None if name is None else _text(name, "name", MAX_NAME, multiline=False),
        logo=_logo(body.get("logo")),
        accent=accent.lower() if isinstance(accent, str) else None,
        headline=_per_language(body.get("headline"), "headline", MAX_HEADLINE),
        message=_per_language(body.get("message"), "message", MAX_MESSAGE),
    )


# --- contrast (WCAG 2.x relative luminance) --------------------------------------------------


def _channel(value: int) -> float:
    c = value / 255
    return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4


def luminance(colour: str) -> float:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * _channel(r) + 0.7152 * _channel(g) + 0.0722 * _channel(b)


def contrast(first: str, second: str) -> float:
    light, dark = sorted((luminance(first), luminance(second)), reverse=True)
    return (light + 0.05) / (dark + 0.05)


def readable_accent(colour: str, background: str = "#ffffff") -> str:
    """``colour``, darkened in small steps (hue kept) until it reaches AA against
    ``background``; a colour that already passes comes back unchanged."""
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    candidate = colour.lower()
    factor = 1.0
    while contrast(candidate, background) < AA_CONTRAST and factor > 0:
        factor = round(factor - 0.02, 2)
        candidate = "#{:02x}{:02x}{:02x}".format(*(int(c * factor) for c in (r, g, b)))
    return candidate


def build_page_document(
    event_id: str,
    settings: PageSettings,
    *,
    queue_method: str | None,
    updated_at_ms: int,
    prequeue: tuple[int, int] | None = None,
) -> bytes:
    """The public JSON the waiting page reads; stable key order so equal inputs give equal
    bytes (the publisher skips an unchanged document). ``prequeue`` is the event's
    ``(prequeueStart, saleStart)`` in epoch ms: the document names them as the status does
    (RFC 3339, UTC), so the page explains the pre-queue before its first call."""
    document: dict[str, Any] = {
        "version": DOCUMENT_VERSION,
        "eventId": event_id,
        **settings.to_stored(),
        "updatedAt": updated_at_ms,
    }
    if settings.accent:
        document["accentText"] = readable_accent(settings.accent)
    if queue_method:
        document["queueMethod"] = queue_method
    if prequeue is not None:
        document["prequeueStart"] = iso_of_ms(prequeue[0])
        document["saleStart"] = iso_of_ms(prequeue[1])
    return json.dumps(document, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()


def document_target(edge_config_target: str, event_id: str) -> str:
    """Where an event's document goes: ``events/{id}.json`` beside the edge document (a file
    locally, the same bucket and folder in AWS, which CloudFront serves as ``/vwr/events/``)."""
    folder, _, _ = edge_config_target.rpartition("/")
    return f"{folder}/events/{event_id}.json" if folder else f"events/{event_id}.json"
