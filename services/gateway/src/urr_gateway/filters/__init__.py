"""The gateway filters, one module each, run in the order `chain.py` declares."""
