"""The operator console: one page, one figures endpoint, audited controls (issue 21, item 2).

Why here, in the queue service: the console's figures are mostly Tier 2's own (its Redis,
read with its own scripts), the queue already talks to the Tier-1 DynamoDB tables (the
spent-place marker), and the admin role already guards ``/api/v1/admin/queue``. One service
assembles the view so the page makes one request every 2 s instead of one per source, and
many open consoles share one cached read (``aggregate.py``).
"""
