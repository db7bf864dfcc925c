"""Preparing a run through the services' public admin APIs: admin token, rooms, queue, users."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import jwt

from urr_loadtests.stack import Stack


def http(
    method: str,
    url: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    timeout: float = 10,
) -> tuple[int, Any]:
    """A small JSON request; returns (status, parsed body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)  # noqa: S310
    request.add_header("content-type", "application/json")
    for key, value in (headers or {}).items():
        request.add_header(key, value)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            raw = answer.read()
            status = answer.status
    except urllib.error.HTTPError as exc:
        raw, status = exc.read(), exc.code
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw.decode(errors="replace")


def admin_token(stack: Stack) -> str:
    status, answer = http(
        "POST",
        f"{stack.url('auth')}/api/v1/auth/login",
        {"email": stack.admin_email, "password": stack.admin_password},
    )
    if status != 200:
        raise RuntimeError(f"admin login failed: {status} {answer}")
    return str(answer["access_token"])


def seed_event(stack: Stack, event_id: str, *, capacity: int, admit_per_second: float) -> None:
    """A fresh event (100 seats A1-J10) with its Tier-2 queue, via the ticket seed command."""
    env = {
        "URR_POSTGRES__DSN": stack.url("postgres"),
        # The seed configures the queue on its internal listener, as the ticket service.
        "URR_QUEUE_ADMIN__BASE_URL": stack.url("queue-internal"),
        "URR_QUEUE_CREDENTIAL__NAME": "ticket",
        "URR_QUEUE_CREDENTIAL__SECRET": stack.secret("queue-ticket"),
        "PATH": "/usr/bin:/bin",
    }
    done = subprocess.run(  # noqa: S603 - the stack's own seed command
        [
            sys.executable,
            "-m",
            "urr_ticket",
            "seed",
            "--event",
            event_id,
            "--name",
            f"Load test {event_id}",
            "--capacity",
            str(capacity),
            "--admit-per-second",
            str(admit_per_second),
            "--session-seconds",
            "300",
            "--idle-timeout-seconds",
            "60",
            "--require-tier1-token",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0 or "NOT configured" in done.stderr:
        raise RuntimeError(f"seeding {event_id} failed: {done.stdout}{done.stderr}")


def configure_queue(stack: Stack, token: str, event_id: str, **fields: Any) -> dict[str, Any]:
    status, answer = http(
        "PATCH",
        f"{stack.url('gateway')}/api/v1/admin/queue/{event_id}",
        fields,
        {"authorization": f"Bearer {token}"},
    )
    if status not in (200, 201):
        raise RuntimeError(f"queue admin PATCH failed: {status} {answer}")
    return dict(answer)


def activate_room(
    stack: Stack,
    token: str,
    event_id: str,
    batch_size: int = 500,
    pow_bits: int | None = None,
) -> None:
    """Opens the event's waiting room; ``pow_bits`` also asks every assign for a proof of work."""
    # Every simulated visitor comes from this one machine's address: the per-address cap of
    # anonymous places (issue 15, default 2) would refuse all but two of them.
    body: dict[str, Any] = {"isActive": True, "batchSize": batch_size, "placesPerClient": 0}
    if pow_bits is not None:
        body.update(botChallenge="pow", powBits=pow_bits)
    status, answer = http(
        "PUT",
        f"{stack.url('vwr-apigw')}/vwr/admin/events/{event_id}",
        body,
        {"authorization": f"Bearer {token}"},
    )
    if status not in (200, 201):
        raise RuntimeError(f"activating the waiting room failed: {status} {answer}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def wait_for_edge_gate(stack: Stack, event_id: str, timeout_s: float = 30.0) -> None:
    """Return once the edge sends visitors of ``event_id`` to the waiting page.

    The edge learns that a room opened from its published configuration a moment later (so
    does a CDN): a crowd started before then would walk straight into the event page.
    """
    opener = urllib.request.build_opener(_NoRedirect)
    url = f"{stack.url('vwr-edge')}/events/{event_id}"
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with opener.open(url, timeout=5) as answer:
                status = answer.status
        except urllib.error.HTTPError as exc:
            with exc:
                status = exc.code
        if status == 302:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"the edge still lets {url} through {timeout_s:.0f} s after opening")
        time.sleep(0.2)


def deactivate_room(stack: Stack, token: str, event_id: str) -> str:
    """Closes the run's room; a busy Tier 1 may not answer in time (said, not raised)."""
    try:
        status, _ = http(
            "PUT",
            f"{stack.url('vwr-apigw')}/vwr/admin/events/{event_id}",
            {"isActive": False},
            {"authorization": f"Bearer {token}"},
            timeout=60,
        )
    except OSError as exc:
        return f"not deactivated: {exc!r}"
    return f"deactivated ({status})"


def issue_access_tokens(state_dir: Path, count: int, out: Path, ttl_s: int = 1800) -> None:
    """``count`` access tokens for fresh user ids, signed with the stack's local access key.

    The flash crowd's arrivals carry these instead of logging in one by one: the key is the
    one ``urr-devstack`` generated in ``.urr/keys/access``, so the gateway verifies them like
    any login's token.
    """
    keys = sorted((state_dir / "keys" / "access").glob("*.pem"))
    if not keys:
        raise RuntimeError(f"no access signing key in {state_dir / 'keys' / 'access'}")
    key_file = keys[0]
    private = key_file.read_text()
    now = int(time.time())
    lines = []
    for _ in range(count):
        user_id = str(uuid.uuid4())
        claims = {
            "sub": user_id,
            "email": f"{user_id[:8]}@crowd.example",
            "role": "user",
            "iss": "urr-auth",
            "aud": "urr",
            "iat": now,
            "nbf": now,
            "exp": now + ttl_s,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, private, algorithm="ES256", headers={"kid": key_file.stem})
        lines.append(f"{user_id} {token}\n")
    out.write_text("".join(lines))


def register_users(stack: Stack, count: int, out: Path, workers: int = 4) -> None:
    """``count`` real accounts (register and log in at the auth service): ``user_id token``."""
    from concurrent.futures import ThreadPoolExecutor

    password = "load-test password 1"  # noqa: S105 - throwaway accounts on the local stack

    def one(_: int) -> str:
        email = f"lt-{uuid.uuid4().hex[:16]}@example.com"
        body = {"email": email, "password": password}
        status, user = http("POST", f"{stack.url('auth')}/api/v1/auth/register", body, timeout=60)
        if status != 201:
            raise RuntimeError(f"register failed: {status} {user}")
        status, login = http("POST", f"{stack.url('auth')}/api/v1/auth/login", body, timeout=60)
        if status != 200:
            raise RuntimeError(f"login failed: {status} {login}")
        return f"{user['id']} {login['access_token']}\n"

    with ThreadPoolExecutor(workers) as pool:
        out.write_text("".join(pool.map(one, range(count))))
