"""HTTP serving shared by the bus's servers (TAXII inbox, TAXII server, sink lists): TLS with
the local CA, aiohttp's request handler with a connection cap and a header deadline, and the
TAXII 2.1 responses both TAXII servers send (media type, error body, Retry-After, Accept check).

TLS: the secured stack's CA (`deploy/kafka/kafka.sh`: `<STIXBUS_HOME>/secrets/ca.pem`, `ca.key`)
signs a server certificate the first time a server starts with TLS and no certificate of its
own, so clients that trust the stack's CA (they already do, for the broker) verify it too.  A
real deployment gives a certificate from its own CA.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from stixbus.core import taxii
from stixbus.errors import StixbusError
from stixbus.kafka._compat import RequestHandler


class ServeError(StixbusError):
    """A server could not start (TLS material, port)."""

    fix = "see the message; docs/operations.md lists the servers and their settings"


def _san(hosts: list[str]) -> str:
    names = []
    for host in dict.fromkeys([*hosts, "127.0.0.1", "localhost"]):
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def ensure_server_cert(
    secrets_dir: Path, cert: Path, key: Path, hosts: list[str], what: str = "inbox"
) -> None:
    """Create `cert`/`key` signed by `secrets_dir`/ca.pem + ca.key when they do not exist
    (`what` names the server in messages and in the certificate's CN)."""
    if cert.is_file() and key.is_file():
        return
    ca_pem, ca_key = secrets_dir / "ca.pem", secrets_dir / "ca.key"
    if not (ca_pem.is_file() and ca_key.is_file()):
        raise ServeError(
            f"{what} TLS: no certificate at {cert} and no local CA ({ca_pem}, {ca_key}) to sign "
            "one: run `deploy/kafka/kafka.sh compose-secrets` (makes the CA), or give a "
            f"certificate and key in the {what} settings, or turn TLS off (plain HTTP, demos only)"
        )
    if shutil.which("openssl") is None:
        raise ServeError(
            f"{what} TLS: openssl not found: install it, or give a certificate and key"
        )
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=cert.parent) as tmp:
        work = Path(tmp)
        (work / "ext").write_text(
            f"subjectAltName={_san(hosts)}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        )
        steps = [
            ["openssl", "req", "-newkey", "rsa:3072", "-sha256", "-nodes", "-subj",
             f"/CN=stixbus {what}", "-keyout", str(work / "key"), "-out", str(work / "csr")],
            ["openssl", "x509", "-req", "-sha256", "-days", "825", "-in", str(work / "csr"),
             "-CA", str(ca_pem), "-CAkey", str(ca_key), "-CAcreateserial",
             "-CAserial", str(work / "serial"), "-extfile", str(work / "ext"),
             "-out", str(work / "pem")],
        ]  # fmt: skip
        old = os.umask(0o077)
        try:
            for step in steps:
                done = subprocess.run(step, capture_output=True, text=True, check=False)
                if done.returncode != 0:
                    raise ServeError(
                        f"{what} TLS: openssl could not make the {what} certificate in "
                        f"{cert.parent}: {done.stderr.strip()[-300:]}"
                    )
        finally:
            os.umask(old)
        (work / "key").chmod(0o600)
        os.replace(work / "key", key)
        os.replace(work / "pem", cert)


def server_context(
    cert: Path, key: Path, client_ca: Path | None = None, what: str = "inbox"
) -> ssl.SSLContext:
    """TLS 1.2+ server context; with `client_ca`, client certificates signed by it are asked
    for (optional: a client without one authenticates otherwise)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ServeError(f"{what} TLS: cannot load {cert} / {key}: {exc}") from exc
    if client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ServeError(f"{what} TLS: cannot load client CA {client_ca}: {exc}") from exc
        context.verify_mode = ssl.CERT_OPTIONAL
    return context


def tls_context(
    home: Path,
    host: str,
    what: str,
    cert: Path | None,
    key: Path | None,
    client_ca: Path | None = None,
) -> ssl.SSLContext:
    """The `what` server's TLS context: its own `cert`/`key`, or by default
    `<home>/secrets/<what>.pem` and `.key`, made and signed by the local CA at first start."""
    secrets_dir = home / "secrets"
    cert = cert or secrets_dir / f"{what}.pem"
    key = key or secrets_dir / f"{what}.key"
    ensure_server_cert(secrets_dir, cert, key, [host], what)
    return server_context(cert, key, client_ca, what)


# -- TAXII 2.1 responses: every answer, errors included, is application/taxii+json;version=2.1 --


def taxii_response(
    body: bytes, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(
        status=status, body=body, headers={"Content-Type": taxii.TAXII_MEDIA, **(headers or {})}
    )


def taxii_error(
    status: int, title: str, description: str, headers: Mapping[str, str] | None = None
) -> web.Response:
    return taxii_response(taxii.error_body(status, title, description), status, headers)


def retry_after(seconds: float) -> dict[str, str]:
    """The Retry-After header for a wait of `seconds` (whole seconds, at least one)."""
    return {"Retry-After": str(max(1, int(seconds + 0.999)))}


def not_acceptable(request: web.Request) -> web.Response | None:
    """The 406 for a request whose Accept header a TAXII 2.1 server may not answer, else None."""
    if taxii.accept_ok(request.headers.get("Accept", "")):
        return None
    return taxii_error(406, "Not Acceptable", f"send 'Accept: {taxii.TAXII_MEDIA}'")


class ServerLimits(Protocol):
    max_connections: int
    header_timeout_seconds: float


class GuardedHandler(RequestHandler):
    """aiohttp's request handler with a connection cap and a request-header deadline.

    aiohttp closes a connection that has no complete request `keepalive_timeout` after it
    opened or after its last response (the idle timeout); this adds: at most `max_connections`
    open (more get a 503 and are closed), and headers must be complete within
    `header_timeout` of their first byte (slowloris).
    """

    def __init__(self, *args: Any, limits: ServerLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        manager = self._manager
        if manager is not None and len(manager.connections) >= self._limits.max_connections:
            self._refused = True
            self._manager = None  # never registered: connection_lost has nothing to undo
            if isinstance(transport, asyncio.WriteTransport):
                transport.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                    b"Connection: close\r\nRetry-After: 1\r\n\r\n"
                )
            transport.close()
            return
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return
        if self._header_timer is None and not self._request_in_progress:
            self._header_timer = self._loop.call_later(
                self._limits.header_timeout_seconds, self._header_deadline
            )
        super().data_received(data)

    def _header_deadline(self) -> None:
        self._header_timer = None
        if not self._request_in_progress and self._waiter is not None and not self._waiter.done():
            self.force_close()  # still waiting for a complete request after the deadline

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        super().connection_lost(exc)


async def listen(
    runner: web.AppRunner,
    host: str,
    port: int,
    limits: ServerLimits,
    context: ssl.SSLContext | None,
) -> asyncio.Server:
    """Serve `runner` (set up) on host:port through `GuardedHandler`s."""
    server = runner.server
    assert server is not None
    loop = asyncio.get_running_loop()
    handler_kwargs = dict(server._kwargs)  # what AppRunner passes to its own handlers

    def factory() -> GuardedHandler:
        assert server is not None
        return GuardedHandler(server, loop=loop, limits=limits, **handler_kwargs)

    return await loop.create_server(
        factory,
        host,
        port,
        ssl=context,
        ssl_handshake_timeout=limits.header_timeout_seconds if context else None,
        backlog=min(limits.max_connections, 1024),
    )
