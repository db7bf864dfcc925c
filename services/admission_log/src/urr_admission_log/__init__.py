"""The public admission log (issue 19): a per-event Merkle log of admissions."""
