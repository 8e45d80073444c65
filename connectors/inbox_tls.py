"""TLS material of the TAXII inbox (stixbus/http.py makes and loads it; this names the inbox
and reports failures as connector errors)."""

from __future__ import annotations

import ssl
from pathlib import Path

from connectors.base import ConnectorError
from stixbus import http


def ensure_server_cert(secrets_dir: Path, cert: Path, key: Path, hosts: list[str]) -> None:
    """Create `cert`/`key` signed by `secrets_dir`/ca.pem + ca.key when they do not exist."""
    try:
        http.ensure_server_cert(secrets_dir, cert, key, hosts, "inbox")
    except http.ServeError as exc:
        raise ConnectorError(exc.what) from exc


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2+ server context with the inbox certificate."""
    try:
        return http.server_context(cert, key)
    except http.ServeError as exc:
        raise ConnectorError(exc.what) from exc
