"""The worker's own start-up path (``connect_postgres``: retrying, then migrating) goes through
the shared PostgreSQL settings, so ``verify-full`` secures it, and a server it must not trust
keeps it retrying with the reason on its heartbeat (readiness says why)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

import pytest

from urr_common.settings import load_settings
from urr_devstack.tls import TestCa, TlsPostgres, tls_postgres_server
from urr_ticket_worker.process import Heartbeat, connect_postgres
from urr_ticket_worker.settings import TicketWorkerSettings


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCa:
    return TestCa(tmp_path_factory.mktemp("ca"), "worker-data-ca")


@pytest.fixture(scope="module")
def tls_postgres(ca: TestCa) -> Iterator[TlsPostgres]:
    with tls_postgres_server(ca, ["127.0.0.1"]) as server:
        yield server


def _worker_settings(
    monkeypatch: pytest.MonkeyPatch, server: TlsPostgres, root_cert: str
) -> TicketWorkerSettings:
    for name in list(os.environ):
        if name.startswith("URR_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("URR_POSTGRES__DSN", server.dsn)
    monkeypatch.setenv("URR_POSTGRES__SSLMODE", "verify-full")
    monkeypatch.setenv("URR_POSTGRES__SSLROOTCERT", root_cert)
    return load_settings(TicketWorkerSettings)


async def test_the_worker_connects_and_migrates_over_verified_tls(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: TlsPostgres, ca: TestCa
) -> None:
    settings = _worker_settings(monkeypatch, tls_postgres, str(ca.ca_file))
    pool = await connect_postgres(settings.postgres, asyncio.Event(), Heartbeat())
    assert pool is not None
    try:
        encrypted = await pool.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        assert encrypted is True
        # migrated over that connection
        assert await pool.fetchval("SELECT to_regclass('reservations') IS NOT NULL")
    finally:
        await pool.close()


async def test_the_worker_keeps_refusing_a_server_signed_by_another_ca(
    monkeypatch: pytest.MonkeyPatch, tls_postgres: TlsPostgres, tmp_path_factory
) -> None:
    wrong = TestCa(tmp_path_factory.mktemp("wrong-ca"), "not-our-ca")
    settings = _worker_settings(monkeypatch, tls_postgres, str(wrong.ca_file))
    stop, beat = asyncio.Event(), Heartbeat()
    task = asyncio.create_task(connect_postgres(settings.postgres, stop, beat, retry_s=0.1))
    for _ in range(600):  # up to 30 s on a loaded machine
        if beat.last_error is not None:
            break
        await asyncio.sleep(0.05)
    stop.set()
    assert await asyncio.wait_for(task, 30) is None
    assert "SSLCertVerificationError" in str(beat.last_error)
