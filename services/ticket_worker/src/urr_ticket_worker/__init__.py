"""Booking back end: SQS FIFO worker, outbox relay, payment stand-in, stats, schema."""
