"""Throw-away certificate authorities and TLS-enabled data stores for tests.

A test proves that a client verifies a server only if it can also show the client refusing
a server it should not trust: so every ``TestCa`` is its own root, and a second one stands
in for "the wrong CA". Keys are EC P-256, certificates live for a day, and everything is
written into a folder the caller owns (and removes).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import pwd
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from urr_devstack import postgres
from urr_devstack.procs import RedisServer, free_port


@dataclass(frozen=True)
class IssuedCert:
    cert_file: Path
    key_file: Path


class TestCa:
    """A self-signed root that issues server and client certificates into ``folder``."""

    __test__ = False  # not a pytest test class

    def __init__(self, folder: Path, name: str = "urr-test-ca") -> None:
        self.folder = folder
        self.name = name
        folder.mkdir(parents=True, exist_ok=True)
        self._key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        now = dt.datetime.now(dt.UTC)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = folder / f"{name}.pem"
        self.ca_file.write_bytes(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, common_name: str, hosts: list[str], *, client: bool = False) -> IssuedCert:
        """A leaf certificate for ``hosts`` (DNS names or IP addresses) and its key."""
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        now = dt.datetime.now(dt.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        cert = builder.sign(self._key, hashes.SHA256())
        cert_file = self.folder / f"{common_name}.crt"
        key_file = self.folder / f"{common_name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_file.chmod(0o600)
        return IssuedCert(cert_file, key_file)


@contextlib.contextmanager
def tls_redis_server(
    workdir: Path, ca: TestCa, *, password: str, require_client_cert: bool = False
) -> Iterator[RedisServer]:
    """A private ``redis-server`` that speaks TLS only (no plain port) and wants ``password``."""
    server_cert = ca.issue("redis-server", ["localhost", "127.0.0.1"])
    port = free_port()
    args = ["--port", "0", "--tls-port", str(port)]
    args += ["--tls-cert-file", str(server_cert.cert_file)]
    args += ["--tls-key-file", str(server_cert.key_file)]
    args += ["--tls-ca-cert-file", str(ca.ca_file)]
    args += ["--tls-auth-clients", "yes" if require_client_cert else "no"]
    args += ["--requirepass", password]
    server = RedisServer(port=port, workdir=workdir, extra_args=args, die_with_parent=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass(frozen=True)
class TlsPostgres:
    host: str
    port: int
    #: DSN without any TLS parameters (the settings under test add them).
    dsn: str


@contextlib.contextmanager
def tls_postgres_server(
    ca: TestCa, server_names: list[str], *, cert_users: tuple[str, ...] = ()
) -> Iterator[TlsPostgres]:
    """A throw-away PostgreSQL on a free port with ``ssl=on`` and a certificate from ``ca``
    naming ``server_names`` only, so a test can connect by a name the certificate lacks.

    ``cert_users`` are login roles that must authenticate with a client certificate from
    ``ca`` whose common name is the role (``hostssl ... cert``); everyone else is trusted.
    """
    # mkdtemp, not pytest's tmp_path: under root the server runs as the postgres user, who
    # must read its key and cannot enter pytest's 0700 base folder.
    parent = Path(tempfile.mkdtemp(prefix="urr-test-postgres-tls-"))
    port = free_port()
    try:
        certs = parent / "certs"
        server_cert = ca.issue("postgres-server", server_names)
        certs.mkdir()
        cert_file = shutil.copy(server_cert.cert_file, certs / "server.crt")
        key_file = shutil.copy(server_cert.key_file, certs / "server.key")
        ca_file = shutil.copy(ca.ca_file, certs / "clients-ca.crt")
        hba_file = certs / "pg_hba.conf"
        rules = [f"hostssl all {user} 127.0.0.1/32 cert" for user in cert_users]
        rules += ["host all all 127.0.0.1/32 trust"]
        hba_file.write_text("\n".join(rules) + "\n")
        run_as = postgres.run_as_user("postgres")
        if run_as is not None:  # the key must belong to the server's user, mode 0600
            entry = pwd.getpwnam(run_as)
            for path in (parent, certs, Path(cert_file), Path(key_file), Path(ca_file), hba_file):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        Path(key_file).chmod(0o600)
        settings = {
            **postgres.FAST_UNSAFE_SETTINGS,
            "ssl": "on",
            "ssl_cert_file": str(cert_file),
            "ssl_key_file": str(key_file),
            "ssl_ca_file": str(ca_file),
            "hba_file": str(hba_file),
        }
        server = postgres.private_postgres(parent, port, parent / "postgres.log", settings=settings)
        server.die_with_parent = True
        server.start()
        try:
            dsn = postgres.dsn("127.0.0.1", port, "postgres", "postgres")
            asyncio.run(postgres.wait_accepting(dsn, 30))
            if cert_users:
                asyncio.run(_create_roles(dsn, cert_users))
            yield TlsPostgres("127.0.0.1", port, dsn)
        finally:
            server.stop()
    finally:
        shutil.rmtree(parent, ignore_errors=True)


async def _create_roles(admin_dsn: str, roles: tuple[str, ...]) -> None:
    import asyncpg

    connection = await asyncpg.connect(admin_dsn)
    try:
        for role in roles:
            await connection.execute(f'CREATE ROLE "{role}" LOGIN')
    finally:
        await connection.close()


@contextlib.asynccontextmanager
async def tls_terminating_proxy(
    upstream_host: str,
    upstream_port: int,
    server_cert: IssuedCert,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    client_ca: Path | None = None,
) -> AsyncIterator[int]:
    """A TLS listener on ``port`` (0: a free one) forwarding bytes to a plain-TCP server
    (Tansu speaks no TLS); yields its port. What a client sends after the handshake reaches
    the upstream unchanged. With ``client_ca``, clients must present a certificate from it."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(server_cert.cert_file), str(server_cert.key_file))
    if client_ca is not None:
        context.load_verify_locations(cafile=str(client_ca))
        context.verify_mode = ssl.CERT_REQUIRED
    tasks: set[asyncio.Task[None]] = set()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(upstream_host, upstream_port)
        except OSError:
            writer.close()
            return
        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def track(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(serve(reader, writer))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    server = await asyncio.start_server(track, host, port, ssl=context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(tasks):
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()
