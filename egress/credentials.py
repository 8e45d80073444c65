"""Subscriber credentials for the pull servers (TAXII server, sink lists): per-org HTTP Basic
passwords and API-key bearer tokens, scrypt-hashed at rest, rotatable and revocable.

One file, `<STIXBUS_HOME>/secrets/taxii-credentials.yaml` by default (0600, written atomically
with `stixbus.files.atomic_write`); `stixbus taxii credentials add|rotate|revoke|list` edits it.
Each credential belongs to one org and is one of:

- `basic`: a username (unique in the file; default the org id) and a generated password, for
  clients that speak only HTTP Basic (Microsoft Sentinel, Splunk ES);
- `token`: `sbt_<id>_<secret>`, sent as `Authorization: Bearer <token>` (or as the Basic
  password, with any username, for clients that can only send a user/password pair).

Servers use `CredentialStore.authenticate(authorization_header) -> org | None`:

- scrypt runs in a small thread pool, never on the event loop; a success is cached (by a
  SHA-256 of the header) until the file changes, so a polling SIEM costs one hash per rotation;
- an unknown username or token id is checked against a dummy hash of the same cost, so timing
  does not tell which names exist;
- the file is re-read when it changes (a revoke or rotate takes effect on the next request);
- an optional `AttemptLimiter` bounds the scrypt checks per username / token id (RateLimited).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from schemas.yaml_file import read_yaml
from stixbus.core.ids import stix_time
from stixbus.core.ratelimit import AttemptLimiter, RateLimited
from stixbus.errors import ConfigError, NotFound
from stixbus.files import atomic_write

__all__ = [
    "Credential",
    "CredentialStore",
    "RateLimited",
    "add_credential",
    "default_path",
    "list_credentials",
    "revoke_credential",
    "rotate_credential",
]

Kind = Literal["basic", "token"]
TOKEN_PREFIX = "sbt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
USERNAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$"


class Credential(BaseModel):
    """One stored credential (never the secret: its scrypt hash and salt)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^[0-9a-f]{12}$")
    org: str
    kind: Kind
    username: str | None = Field(default=None, pattern=USERNAME_PATTERN)
    label: str = ""
    created: str
    rotated: str | None = None
    salt: str
    hash: str
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P


class CredentialFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    credentials: list[Credential] = Field(default_factory=list)


def default_path(home: Path) -> Path:
    return home / "secrets" / "taxii-credentials.yaml"


def _scrypt(secret: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(secret.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 << 20)


def _load(path: Path) -> CredentialFile:
    if not path.exists():
        return CredentialFile()
    data = read_yaml(path, "credentials file") or {}
    try:
        return CredentialFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            f"credentials file {path} is invalid: {exc}",
            "edit it only with `stixbus taxii credentials …`, or restore it from a backup",
        ) from None


def _save(path: Path, file: CredentialFile) -> None:
    text = yaml.safe_dump(file.model_dump(mode="json", exclude_none=True), sort_keys=False)
    atomic_write(path, text.encode("utf-8"), 0o600)


def _now() -> str:
    return stix_time(datetime.now(UTC))


def _hashed(secret: str) -> dict[str, str]:
    salt = secrets.token_bytes(16)
    return {"salt": salt.hex(), "hash": _scrypt(secret, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P).hex()}


def _secret_for(record: Credential, secret: str) -> str:
    return f"{TOKEN_PREFIX}_{record.id}_{secret}" if record.kind == "token" else secret


def list_credentials(path: Path, org: str | None = None) -> list[Credential]:
    return [c for c in _load(path).credentials if org is None or c.org == org]


def add_credential(
    path: Path, org: str, kind: Kind = "basic", username: str | None = None, label: str = ""
) -> tuple[Credential, str]:
    """Mint a credential for `org`; store only its hash; return it and its secret (shown once:
    the password for `basic`, the whole `sbt_…` token for `token`)."""
    file = _load(path)
    if kind == "basic":
        username = username or org
        if any(c.username == username for c in file.credentials):
            raise ConfigError(
                f"username {username!r} already has a credential in {path}",
                "choose another with --username, or `stixbus taxii credentials rotate ID`",
            )
    elif username is not None:
        raise ConfigError(
            "--username is for basic credentials only",
            "drop --username (a token names its own id), or use --kind basic",
        )
    secret = secrets.token_urlsafe(32)
    record = Credential(
        id=secrets.token_hex(6),
        org=org,
        kind=kind,
        username=username,
        label=label,
        created=_now(),
        **_hashed(secret),
    )
    file.credentials.append(record)
    _save(path, file)
    return record, _secret_for(record, secret)


def _find(file: CredentialFile, path: Path, credential_id: str) -> int:
    for i, c in enumerate(file.credentials):
        if c.id == credential_id:
            return i
    raise NotFound(
        f"no credential {credential_id!r} in {path}",
        "see the ids with `stixbus taxii credentials list`",
    )


def rotate_credential(path: Path, credential_id: str) -> tuple[Credential, str]:
    """A new secret for the credential (same id, username and org); the old one stops working
    at the next request of any server reading the file."""
    file = _load(path)
    i = _find(file, path, credential_id)
    secret = secrets.token_urlsafe(32)
    record = file.credentials[i].model_copy(update={"rotated": _now(), **_hashed(secret)})
    file.credentials[i] = record
    _save(path, file)
    return record, _secret_for(record, secret)


def revoke_credential(path: Path, credential_id: str) -> Credential:
    file = _load(path)
    i = _find(file, path, credential_id)
    record = file.credentials.pop(i)
    _save(path, file)
    return record


def parse_authorization(header: str | None) -> tuple[Kind, str, str] | None:
    """(`basic`, username, password) or (`token`, token id, token) from an Authorization
    header; a Basic password that is an `sbt_` token counts as that token.  None if malformed."""
    scheme, _, value = (header or "").strip().partition(" ")
    value = value.strip()
    if not value:
        return None
    if scheme.lower() == "bearer":
        token = value
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(value, validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            return None
        username, sep, password = decoded.partition(":")
        if not sep or not password:
            return None
        if not password.startswith(f"{TOKEN_PREFIX}_"):
            return ("basic", username, password)
        token = password
    else:
        return None
    parts = token.split("_", 2)
    if len(parts) != 3 or parts[0] != TOKEN_PREFIX:
        return ("token", "", token)  # checked against the dummy: same cost, never matches
    return ("token", parts[1], token)


# Checked when a username or token id is unknown, so it costs the same scrypt as a known one.
_DUMMY = Credential(
    id="000000000000",
    org="",
    kind="basic",
    created="",
    salt=secrets.token_bytes(16).hex(),
    hash=secrets.token_bytes(32).hex(),
)


class CredentialStore:
    """Verifies Authorization headers against the hashed credentials file (see the module)."""

    def __init__(
        self,
        path: Path,
        limiter: AttemptLimiter | None = None,
        orgs: set[str] | None = None,
        cache_size: int = 10_000,
    ) -> None:
        self.path = path
        self.limiter = limiter
        self.orgs = orgs  # when given, credentials of any other org are ignored
        self.cache_size = cache_size
        self._stamp: tuple[int, int] | None = None
        self._basic: dict[str, Credential] = {}
        self._tokens: dict[str, Credential] = {}
        self._verified: dict[str, str] = {}  # sha256(header) -> org
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="credentials-scrypt")

    def _reload(self) -> None:
        try:
            st = os.stat(self.path)
            stamp = (st.st_mtime_ns, st.st_ino)
        except FileNotFoundError:
            stamp = (-1, -1)
        if stamp == self._stamp:
            return
        records = [
            c for c in _load(self.path).credentials if self.orgs is None or c.org in self.orgs
        ]
        self._basic = {c.username: c for c in records if c.kind == "basic" and c.username}
        self._tokens = {c.id: c for c in records if c.kind == "token"}
        self._verified.clear()
        self._stamp = stamp

    def _lookup(self, parsed: tuple[Kind, str, str]) -> Credential | None:
        kind, name, _ = parsed
        return (self._basic if kind == "basic" else self._tokens).get(name)

    @staticmethod
    def _check(parsed: tuple[Kind, str, str], record: Credential | None) -> str | None:
        """Blocking: the org when the secret matches `record`; the same work when it is None."""
        kind, _, secret = parsed
        candidate = record or _DUMMY
        if kind == "token" and record is not None:
            secret = secret.split("_", 2)[2]
        c = candidate
        digest = _scrypt(secret, bytes.fromhex(c.salt), c.n, c.r, c.p)
        if not hmac.compare_digest(digest.hex(), candidate.hash) or record is None:
            return None
        return record.org

    async def authenticate(self, authorization: str | None) -> str | None:
        """The org the Authorization header authenticates, or None (missing, malformed, wrong
        or revoked).  Raises RateLimited past the limiter's attempts for that username/token."""
        self._reload()
        parsed = parse_authorization(authorization)
        if parsed is None:
            return None
        fingerprint = hashlib.sha256(f"{self._stamp}|{authorization}".encode()).hexdigest()
        if (org := self._verified.get(fingerprint)) is not None:
            return org
        if self.limiter is not None:
            self.limiter.check(f"{parsed[0]}:{parsed[1]}")
        record = self._lookup(parsed)
        loop = asyncio.get_running_loop()
        org = await loop.run_in_executor(self._pool, self._check, parsed, record)
        if org is not None:
            if len(self._verified) >= self.cache_size:
                self._verified.clear()
            self._verified[fingerprint] = org
        return org

    def authenticate_blocking(self, authorization: str | None) -> str | None:
        """The same check, blocking (CLI and tests; servers use `authenticate`)."""
        self._reload()
        parsed = parse_authorization(authorization)
        return None if parsed is None else self._check(parsed, self._lookup(parsed))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
