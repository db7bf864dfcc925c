"""Trying the crowd with several browsers on one machine (issue 21 item 5).

Every browser on a laptop comes from the same address, and AUTH's default policy counts
anonymous callers (a login has no user yet) per address: six people logging in at once from
one machine look like one person logging in six times. With ``URR_LOCAL_TRIAL__BROWSERS=N``
(local and test environments only; the settings refuse it elsewhere) the published default
``auth`` policy allows N times its stored limits. Nothing stored changes: PostgreSQL, the admin
API and the audit log keep the real figures, and going back to 1 (the default) publishes them
again at the next publish.
"""

from __future__ import annotations

from urr_common.ratelimit_policies import Policy, PolicySet, Window

#: The default policies that count per address before a login: the ones a trial widens.
PER_ADDRESS_POLICIES = frozenset({"auth"})


def widened(policy: Policy, browsers: int) -> Policy:
    windows = tuple(
        Window(limit=window.limit * browsers, window_s=window.window_s) for window in policy.windows
    )
    return policy.model_copy(update={"windows": windows})


def for_local_trial(policies: PolicySet, browsers: int) -> PolicySet:
    """``policies`` with the per-address default policies' limits times ``browsers``."""
    if browsers <= 1:
        return policies
    changed = tuple(
        widened(p, browsers) if p.tenant is None and p.id in PER_ADDRESS_POLICIES else p
        for p in policies.policies
    )
    return policies.model_copy(update={"policies": changed})
