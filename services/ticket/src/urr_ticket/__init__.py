"""The URR booking API (stand-in for the protected application)."""
