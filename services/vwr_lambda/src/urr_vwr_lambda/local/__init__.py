"""Local stand-ins for API Gateway, CloudFront and EventBridge (started by ``make up``)."""

from __future__ import annotations
