"""TLS material of the TAXII inbox: a server certificate signed by the local CA (openssl).

The secured stack's CA (`deploy/kafka/kafka.sh`: `<STIXBUS_HOME>/secrets/ca.pem`, `ca.key`)
signs an inbox certificate the first time the inbox starts with TLS and no certificate of its
own, so clients that trust the stack's CA (they already do, for the broker) verify the inbox
too.  A real deployment sets `tls_cert`/`tls_key` to a certificate from its own CA.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import subprocess
import tempfile
from pathlib import Path

from connectors.base import ConnectorError


def _san(hosts: list[str]) -> str:
    names = []
    for host in dict.fromkeys([*hosts, "127.0.0.1", "localhost"]):
        try:
            ipaddress.ip_address(host)
            names.append(f"IP:{host}")
        except ValueError:
            names.append(f"DNS:{host}")
    return ",".join(names)


def ensure_server_cert(secrets_dir: Path, cert: Path, key: Path, hosts: list[str]) -> None:
    """Create `cert`/`key` signed by `secrets_dir`/ca.pem + ca.key when they do not exist."""
    if cert.is_file() and key.is_file():
        return
    ca_pem, ca_key = secrets_dir / "ca.pem", secrets_dir / "ca.key"
    if not (ca_pem.is_file() and ca_key.is_file()):
        raise ConnectorError(
            f"inbox TLS: no certificate at {cert} and no local CA ({ca_pem}, {ca_key}) to sign "
            "one: run `deploy/kafka/kafka.sh compose-secrets` (makes the CA), or set tls_cert and "
            "tls_key in the inbox config, or `tls: false` (plain HTTP, local demos only)"
        )
    if shutil.which("openssl") is None:
        raise ConnectorError("inbox TLS: openssl not found: install it, or set tls_cert/tls_key")
    cert.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with tempfile.TemporaryDirectory(dir=cert.parent) as tmp:
        work = Path(tmp)
        (work / "ext").write_text(
            f"subjectAltName={_san(hosts)}\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n"
        )
        steps = [
            ["openssl", "req", "-newkey", "rsa:3072", "-sha256", "-nodes", "-subj",
             "/CN=stixbus inbox", "-keyout", str(work / "key"), "-out", str(work / "csr")],
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
                    raise ConnectorError(
                        f"inbox TLS: openssl could not make the inbox certificate in "
                        f"{cert.parent}: {done.stderr.strip()[-300:]}"
                    )
        finally:
            os.umask(old)
        (work / "key").chmod(0o600)
        os.replace(work / "key", key)
        os.replace(work / "pem", cert)


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context with the inbox certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as exc:
        raise ConnectorError(f"inbox TLS: cannot load {cert} / {key}: {exc}") from exc
    return context
