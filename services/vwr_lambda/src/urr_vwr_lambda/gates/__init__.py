"""Gates in front of a Tier-1 place (issue 15): the origin check, the per-client cap and
presale access codes. ``guard.guarded_assign`` is the one call the assign route makes."""
