"""Locust files, one per scenario; they talk HTTP only and never import service code.

Each reads its addresses and knobs from ``URR_LT_*`` environment variables the runner sets.
"""

from __future__ import annotations
