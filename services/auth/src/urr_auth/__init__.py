"""Stand-in identity provider for the URR suite."""
