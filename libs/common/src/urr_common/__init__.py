"""Shared code for every URR service."""

from __future__ import annotations

from urr_common.native import install as _install_native_guard

# First, before any other urr_* module loads: a compiled module may replace its source only
# when the build matches it (urr_common.native).
_install_native_guard()
