"""The IETF httpapi rate-limit header fields, and ``Retry-After``.

``RateLimit-Policy: "auth";q=20;w=60`` names each quota policy; ``RateLimit: "auth";r=0;t=17``
gives what is left and the seconds until quota comes back (draft-ietf-httpapi-ratelimit-headers,
structured-field lists since -07). Seconds are rounded up, so ``Retry-After`` is never earlier
than the moment a retry can succeed, and never earlier than ``t``.
"""

from __future__ import annotations

from multidict import istr

from urr_gateway.ratelimit.window import Decision, WindowState, ms_to_s_up

# ``istr``s: set on every answer (``update`` of a case-insensitive multidict folds a plain
# string's case on every call, an ``istr``'s once).
POLICY_HEADER = istr("RateLimit-Policy")
STATE_HEADER = istr("RateLimit")
RETRY_AFTER_HEADER = istr("Retry-After")


def render_policy(windows: tuple[WindowState, ...]) -> str:
    return ",".join(f'"{w.policy}";q={w.limit};w={w.window_s}' for w in windows)


def render_state(windows: tuple[WindowState, ...]) -> str:
    return ",".join(f'"{w.policy}";r={w.remaining};t={w.seconds_until_quota}' for w in windows)


def retry_after_seconds(decision: Decision) -> int:
    """Whole seconds, rounded up, at least 1 for a refusal."""
    return max(ms_to_s_up(decision.retry_after_ms), 1)


def rate_limit_headers(decision: Decision) -> dict[str, str]:
    """Headers for any answer under a limit.

    A fail-open (or fail-closed) decision knows the policy but not the count, so it carries only
    ``RateLimit-Policy``; inventing a remaining count would mislead clients.
    """
    windows = decision.windows
    headers: dict[str, str]
    if len(windows) == 1:  # the common single-window category, without generator and join
        window = windows[0]
        policy = window.policy
        headers = {POLICY_HEADER: f'"{policy}";q={window.limit};w={window.window_s}'}
        if decision.source not in ("open", "closed"):
            # ``seconds_until_quota`` inlined (three calls: property, ms_to_s_up, ceil_div):
            # whole seconds rounded up, never negative.
            until_ms = window.retry_ms or window.reset_ms
            seconds = -(-until_ms // 1000) if until_ms > 0 else 0
            headers[STATE_HEADER] = f'"{policy}";r={window.remaining};t={seconds}'
    else:
        headers = {POLICY_HEADER: render_policy(windows)}
        if decision.source not in ("open", "closed"):
            headers[STATE_HEADER] = render_state(windows)
    if not decision.allowed:
        headers[RETRY_AFTER_HEADER] = str(retry_after_seconds(decision))
    return headers
