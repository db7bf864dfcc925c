"""Local stand-ins for API Gateway, CloudFront and EventBridge (started by ``make up``)."""

from __future__ import annotations

#: The edge's and the API Gateway emulator's young-collection threshold once started
#: (``urr_common.service.settle_heap``; CPython's default is 700): they exist only locally and
#: proxy every request of a crowd, as the gateway does with the same setting.
GC_GEN0_THRESHOLD = 20_000
