"""Tier-2 queue service: a fair Redis queue in front of the seat and booking APIs."""

from __future__ import annotations
