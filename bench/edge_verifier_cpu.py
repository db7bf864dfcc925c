"""CPU per gated request of the edge verifier, with and without remembered admissions (issue 22).

``uv run --frozen python bench/edge_verifier_cpu.py --visitors 500 --requests-each 7 --rounds 3``

Each visitor's token is sent with ``--requests-each`` gated requests (the crowd's admitted
page, enter, status polls, seat map, hold, reservation, leave: ~7), visitors interleaved.
"before" is the same verifier with a memory that never remembers (every request verifies
the ES256 signature, as before the change); rounds alternate, CPU is this process's.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from urr_common.tokens import KeySet, SigningKey, TokenSigner
from urr_vwr_lambda import tier1
from urr_vwr_lambda.edge import AdmittedTokens, EdgeVerifier
from urr_vwr_lambda.edge_config import EdgeConfigSource, build_document

PATHS = (
    "/events/demo",
    "/api/v1/queue/demo/enter",
    "/api/v1/queue/demo/status",
    "/api/v1/seats/demo",
)


class Forgetful(AdmittedTokens):
    def admits(self, config: Any, token: str, event_id: str) -> bool | None:
        return None


def viewer_request(uri: str, token: str) -> dict[str, Any]:
    request = {
        "clientIp": "203.0.113.178",
        "headers": {
            "host": [{"key": "Host", "value": "localhost"}],
            "cookie": [{"key": "Cookie", "value": f"access_token=x; urr-vwr-token={token}"}],
        },
        "method": "GET",
        "querystring": "",
        "uri": uri,
    }
    return {"Records": [{"cf": {"config": {"eventType": "viewer-request"}, "request": request}}]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--visitors", type=int, default=500)
    parser.add_argument("--requests-each", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    key = SigningKey.generate("bench-1")
    signer = TokenSigner(key, issuer="urr-vwr", audience="urr-vwr", ttl_s=600)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "edge-config.json"
        path.write_bytes(
            build_document(
                KeySet([key.verification_key()]),
                ["demo"],
                max_age_s=15,
                issuer="urr-vwr",
                audience="urr-vwr",
            )
        )
        results: dict[str, list[float]] = {"before": [], "after": []}
        for _ in range(args.rounds):
            for variant in ("before", "after"):
                verifier = EdgeVerifier(EdgeConfigSource(str(path)))
                if variant == "before":
                    verifier.admitted = Forgetful()
                tokens = [
                    tier1.issue(
                        signer,
                        event_id="demo",
                        request_id=str(uuid.uuid4()),
                        position=n + 1,
                        user_id=None,
                    )
                    for n in range(args.visitors)
                ]
                events = [
                    copy.deepcopy(viewer_request(PATHS[i % len(PATHS)], token))
                    for i in range(args.requests_each)
                    for token in tokens
                ]
                started = time.process_time()
                for event in events:
                    answer = verifier(event)
                    assert "status" not in answer, answer
                spent = time.process_time() - started
                results[variant].append(spent / len(events) * 1e6)
        for variant, figures in results.items():
            shown = " / ".join(f"{f:.0f}" for f in figures)
            median = statistics.median(figures)
            print(f"{variant}: CPU µs per gated request {shown} (median {median:.0f})")


if __name__ == "__main__":
    main()
