"""Deployment checks and helpers for the URR suite."""

from __future__ import annotations
