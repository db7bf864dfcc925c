"""Verify URR's fairness claims from public data only (see README.md)."""
