"""Shared code for every URR service."""
