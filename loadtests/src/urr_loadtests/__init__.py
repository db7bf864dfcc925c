"""Load tests for URR: Locust scenarios and the runner that checks the design's targets."""

from __future__ import annotations
