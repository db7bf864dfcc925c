"""Fixtures shared by every test folder: real servers from the local stack's own code."""

from __future__ import annotations

from hypothesis import settings

pytest_plugins = ["urr_devstack.testing"]

# Property tests judge what a function answers, never how fast: Hypothesis's default 200 ms
# deadline per example turned a slow example on a loaded CI machine (three xdist workers and
# their servers on two cores) into a failure that passed again with the same seed.
settings.register_profile("urr", deadline=None)
settings.load_profile("urr")
