"""Fixtures shared by every test folder: real servers from the local stack's own code."""

from __future__ import annotations

pytest_plugins = ["urr_devstack.testing"]
