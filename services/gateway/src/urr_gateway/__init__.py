"""The URR API gateway."""
