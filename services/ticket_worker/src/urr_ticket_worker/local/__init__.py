"""Local stand-ins for what AWS runs in production (the SQS event-source mapping)."""
