"""TAXII inbox tokens (pure of HTTP serving): scrypt-hashed per-org API tokens, their file,
the per-token-id attempt limiter and constant-time verification (connectors/inbox.py serves)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from connectors.base import (
    ConnectorConfigError,
    now_utc,
)
from schemas.yaml_file import read_yaml
from stixbus.core.ids import stix_time
from stixbus.core.ratelimit import AttemptLimiter, RateLimited
from stixbus.errors import ConfigError
from stixbus.files import atomic_write

__all__ = ["AttemptLimiter", "RateLimited", "TokenStore", "create_token", "token_from_request"]


class TokenRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    org: str
    label: str = ""
    created: str
    salt: str
    hash: str
    n: int = 2**14
    r: int = 8
    p: int = 1


class TokenFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tokens: list[TokenRecord] = Field(default_factory=list)


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32)


def load_tokens(path: Path) -> TokenFile:
    if not path.exists():
        return TokenFile()
    try:
        data = read_yaml(path, "token file") or {}
    except ConfigError as exc:
        raise ConnectorConfigError(exc.what, exc.fix) from exc
    try:
        return TokenFile.model_validate(data)
    except ValidationError as exc:
        raise ConnectorConfigError(f"token file {path} is invalid: {exc}") from None


def create_token(path: Path, org: str, label: str = "") -> str:
    """Mint a token for `org`, store only its scrypt hash in `path`; return the token (once)."""
    tokens = load_tokens(path)
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_bytes(16)
    record = TokenRecord(
        id=token_id,
        org=org,
        label=label,
        created=stix_time(now_utc()),
        salt=salt.hex(),
        hash=_scrypt(secret, salt, 2**14, 8, 1).hex(),
    )
    tokens.tokens.append(record)
    text = yaml.safe_dump(tokens.model_dump(mode="json"), sort_keys=False)
    atomic_write(path, text.encode("utf-8"), 0o600)
    return f"sbx_{token_id}_{secret}"


# Verified against when a token names an unknown id, so it costs the same scrypt as a known one.
_DUMMY = TokenRecord(
    id="000000000000",
    org="",
    created="",
    salt=secrets.token_bytes(16).hex(),
    hash=secrets.token_bytes(32).hex(),
)


class TokenStore:
    """Verifies `sbx_<id>_<secret>` tokens against the hashed file; caches successes.

    scrypt runs in a small thread pool (never on the event loop); a token with an unknown or
    malformed id is checked against a dummy hash with the same cost, so timing does not tell
    whether an id exists; `limiter` (when given) bounds attempts per token id.
    """

    def __init__(self, path: Path, limiter: AttemptLimiter | None = None) -> None:
        self.path = path
        self.limiter = limiter
        self._mtime: float | None = None
        self._by_id: dict[str, TokenRecord] = {}
        self._verified: dict[str, str] = {}  # sha256(token) -> org
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="inbox-scrypt")

    def _reload(self) -> None:
        try:
            mtime = self.path.stat().st_mtime
        except FileNotFoundError:
            mtime = -1.0
        if mtime != self._mtime:
            self._by_id = {t.id: t for t in load_tokens(self.path).tokens}
            self._verified.clear()
            self._mtime = mtime

    def _check(self, token: str) -> str | None:
        """Blocking: the org of `token`, or None.  Same scrypt work for unknown ids."""
        parts = token.split("_", 2)
        well_formed = len(parts) == 3 and parts[0] == "sbx"
        record = self._by_id.get(parts[1]) if well_formed else None
        known = record is not None
        record = record or _DUMMY
        secret = parts[2] if well_formed else token
        digest = _scrypt(secret, bytes.fromhex(record.salt), record.n, record.r, record.p)
        if not hmac.compare_digest(digest.hex(), record.hash) or not known:
            return None
        return record.org

    async def verify(self, token: str) -> str | None:
        """The org of `token`, or None; raises RateLimited past the per-id limit."""
        self._reload()
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        if fingerprint in self._verified:
            return self._verified[fingerprint]
        if self.limiter is not None:
            parts = token.split("_", 2)
            self.limiter.check(parts[1] if len(parts) == 3 and parts[0] == "sbx" else "")
        org = await asyncio.get_running_loop().run_in_executor(self._pool, self._check, token)
        if org is not None:
            self._verified[fingerprint] = org
        return org

    def org_for(self, token: str) -> str | None:
        """Blocking check (CLI and tests); servers use `verify`."""
        self._reload()
        return self._check(token)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def token_from_request(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() in ("bearer", "token") and value.strip():
        return value.strip()
    if scheme.lower() == "basic" and value:
        try:
            decoded = base64.b64decode(value.strip()).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        return decoded.partition(":")[2] or None
    return None
